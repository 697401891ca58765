"""The offline quickstart's material: not the library.

Everything here exists to show `tfhub_ft` working with no network and no data
on disk: generated shape images (`shapes`), a tiny CNN saved in the TF Hub
image feature vector format (`tiny_backbone`) and the experiment that
pretrains it, fine-tunes it with `FineTuner` and compares with training from
scratch (`quickstart`, run by `examples/quickstart.py`). The tests reuse the
images and the tiny backbone as fixtures. Nothing in the library imports it.
"""
