"""Fine-tunes a TF Hub image feature vector on flowers or your own photos.

    python examples/flowers.py --hub_url=... [--image_dir=DIR | --tfds_name=tf_flowers] \
        --export_dir=/tmp/flowers_model [--work_dir=/tmp/flowers_run] [--report_dir=DIR]

The same as `tfhub_ft train ...`: the flags are the command's, generated
from `FineTuneConfig` (see `python examples/flowers.py --help`). With
--work_dir every epoch is checkpointed there, and running the same command
again after an interruption resumes the run where it stopped.
"""

import sys

from tfhub_ft import cli

if __name__ == "__main__":
    cli.run(["train", *sys.argv[1:]])
