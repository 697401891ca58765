"""The `tfhub_ft` command: train, evaluate, predict, inspect, lr_find.

    tfhub_ft train --hub_url=... --image_dir=photos/train --export_dir=export/photos
    tfhub_ft evaluate --model=export/photos --image_dir=photos/test
    tfhub_ft predict ...            (tfhub_ft.predict)
    tfhub_ft inspect HANDLE         (tfhub_ft.inspect)
    tfhub_ft lr_find --hub_url=... --image_dir=photos/train --phase=head

`python -m tfhub_ft` is the same command. The training flags are generated
from `FineTuneConfig`'s fields: name, type and default from the dataclass,
help from its docstring's Attributes section, so every config field has a
flag and a default is written once (`config.py`).

The command, not the library, decides what a terminal shows: TensorFlow's
C++ start-up lines are turned down before TensorFlow is imported, Python
logging shows tfhub_ft's one line per stage and everyone's warnings, Keras
draws its progress bars on a terminal and, when the output is a file, one
line per epoch with no control codes. `--verbosity=1` brings TensorFlow's
INFO lines back, 2 adds debug lines. The library's own errors (a bad flag
value, folder or handle, an export folder that cannot be written) print
one line on stderr and exit with status 2; any other error keeps its
traceback.
"""

import argparse
import atexit
import contextlib
import dataclasses
import errno
import inspect
import json
import linecache
import logging
import os
import re
import shlex
import signal
import sys
import threading
import time
import typing
import unicodedata

from tfhub_ft import checks, scratch
from tfhub_ft import config as config_lib
from tfhub_ft import native_stderr

logger = logging.getLogger("tfhub_ft.cli")

EXIT_ERROR = 2
PROG = "tfhub_ft"
_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__))
# Commands another module owns: `tfhub_ft NAME ARGS` calls `tfhub_ft.NAME.main(ARGS)`.
DELEGATED_COMMANDS = {
    "predict": "Predict the classes of images with an exported model (tfhub_ft.predict).",
    "inspect": "List a hub module's blocks, sizes and feature size (tfhub_ft.inspect).",
}
# Shorter names a config field's flag also takes (README's table shows them).
FLAG_ALIASES = {"time_budget_s": ("time_budget",)}
TRUE_WORDS = ("1", "true", "t", "yes", "y", "on")
FALSE_WORDS = ("0", "false", "f", "no", "n", "off")


class UsageError(ValueError):
    """A command-line mistake; printed as one line, exit status 2."""


class _Parser(argparse.ArgumentParser):
    """argparse whose errors are one line (argparse prints usage first)."""

    def error(self, message):
        raise UsageError(f"{message} (see `{self.prog} --help`)")


# ----------------------------------------------------------------------------
# Flags generated from FineTuneConfig.


def config_field_help(config_class=config_lib.FineTuneConfig):
    """{field name: help text} from the class docstring's Attributes section.

    The text of each attribute is its docstring entry with the lines joined.
    """
    doc = inspect.cleandoc(config_class.__doc__ or "")
    match = re.search(r"^Attributes:\s*$", doc, re.MULTILINE)
    helps, name, lines, indent = {}, None, [], None
    if not match:
        return helps
    for line in doc[match.end():].splitlines():
        if not line.strip():
            continue
        current = len(line) - len(line.lstrip())
        if indent is None:
            indent = current
        if current < indent:
            break
        entry = re.match(r"\s*(\w+)(?: \([^)]*\))?: ?(.*)$", line) if current == indent else None
        if entry:
            if name:
                helps[name] = " ".join(lines)
            name, lines = entry.group(1), [entry.group(2).strip()]
        elif name:
            lines.append(line.strip())
    if name:
        helps[name] = " ".join(lines)
    return {key: " ".join(text.split()) for key, text in helps.items()}


def parse_bool(text):
    """'true'/'false' (and 1/0, yes/no, on/off) -> bool."""
    if isinstance(text, bool):
        return text
    word = str(text).strip().lower()
    if word in TRUE_WORDS:
        return True
    if word in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {text!r}")


_METAVAR_WORDS = {"FLOAT": "a number", "INT": "an integer", "STR": "text"}


def _parsed(parse, text, expected):
    """`parse(text)`, its ValueError worded for argparse (which otherwise
    names the parsing function: "invalid parse_optional value")."""
    try:
        return parse(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None


def _value_parser(annotation):
    """A function str -> value of the annotated type, and a metavar."""
    origin = typing.get_origin(annotation)
    arguments = typing.get_args(annotation)
    if annotation is bool:
        return parse_bool, "BOOL"
    if annotation in (int, float, str):
        return annotation, annotation.__name__.upper()
    if origin is typing.Union and type(None) in arguments:
        inner = [a for a in arguments if a is not type(None)]
        parse, metavar = _value_parser(inner[0] if len(inner) == 1 else typing.Union[tuple(inner)])

        def parse_optional(text):
            if str(text).strip().lower() in ("", "none", "null"):
                return None
            return _parsed(parse, text, f"{_METAVAR_WORDS.get(metavar, metavar)} or none")
        return parse_optional, f"{metavar}|none"
    if origin in (tuple, list) or annotation in (tuple, list):
        item = arguments[0] if arguments else str
        parse, metavar = _value_parser(item)

        def parse_sequence(text):
            # "none", as the help writes the empty default, is the empty tuple.
            if str(text).strip().lower() == "none":
                return ()
            return tuple(_parsed(parse, part.strip(),
                                 f"{_METAVAR_WORDS.get(metavar, metavar)}, comma-separated")
                         for part in str(text).split(",") if part.strip())
        return parse_sequence, f"{metavar},..."
    if origin is typing.Literal:
        choices = arguments

        def parse_choice(text):
            for choice in choices:
                if str(choice) == text:
                    return choice
            raise argparse.ArgumentTypeError(
                f"expected one of {', '.join(map(str, choices))}, got {text!r}")
        return parse_choice, "{" + ",".join(map(str, choices)) + "}"

    def parse_any(text):
        # A mapping or anything else: JSON where it parses, else the text.
        try:
            return json.loads(text)
        except ValueError:
            return text
    return parse_any, "VALUE"


def _format_default(value):
    if isinstance(value, tuple):
        return ",".join(map(str, value)) or "none"
    if value is None:
        return "none"
    return str(value)


def config_flags(config_class=config_lib.FineTuneConfig):
    """One flag per field of `config_class`.

    Returns:
        A list of dicts: name, parse (str -> value), metavar, default (the
        dataclass default), help (from the docstring), is_bool.
    """
    hints = typing.get_type_hints(config_class)
    helps = config_field_help(config_class)
    defaults = config_class()
    flags = []
    for field in dataclasses.fields(config_class):
        parse, metavar = _value_parser(hints[field.name])
        flags.append({"name": field.name, "parse": parse, "metavar": metavar,
                      "default": getattr(defaults, field.name),
                      "help": helps.get(field.name, ""),
                      "is_bool": hints[field.name] is bool})
    return flags


def add_config_flags(parser, config_class=config_lib.FineTuneConfig):
    """Adds `--FIELD` for every config field to an argparse parser.

    A bool field also takes `--FIELD` alone (true) and `--noFIELD`; a tuple
    takes a comma-separated list; an optional field takes `none`. A field in
    `FLAG_ALIASES` also takes its aliases (`--time_budget`).
    """
    group = parser.add_argument_group(
        "recipe (FineTuneConfig fields; defaults from tfhub_ft/config.py)")
    presets = getattr(config_lib, "PRESETS", {}) if hasattr(config_class, "from_preset") else {}
    if presets:
        described = "; ".join(
            f"{name}: " + (", ".join(f"{k}={_format_default(v)}" for k, v in changes.items())
                           or "the defaults below")
            for name, changes in presets.items())
        group.add_argument("--preset", default="default", choices=sorted(presets),
                           help=f"Named recipe the flags below start from, `default` "
                                f"unless given ({described}); a flag given explicitly wins.")
    for flag in config_flags(config_class):
        name, text = flag["name"], flag["help"]
        text = f"{text} (default: {_format_default(flag['default'])})"
        # Unset flags stay _UNSET, so that a preset's value is not overridden
        # by a default the user never typed.
        names = [f"--{alias}" for alias in FLAG_ALIASES.get(name, ())] + [f"--{name}"]
        if flag["is_bool"]:
            group.add_argument(*names, dest=name, type=flag["parse"], nargs="?", const=True,
                               default=_UNSET, metavar=flag["metavar"],
                               help=text.replace("%", "%%"))
            group.add_argument(f"--no{name}", dest=name, action="store_false",
                               help=argparse.SUPPRESS)
        else:
            group.add_argument(*names, dest=name, type=flag["parse"], default=_UNSET,
                               metavar=flag["metavar"], help=text.replace("%", "%%"))


_UNSET = argparse.Namespace()  # a marker no flag value can equal


def config_from_args(args, config_class=config_lib.FineTuneConfig):
    """The `FineTuneConfig` of parsed flags: the `--preset` (when the class
    has presets), then every flag given explicitly (validated by the config)."""
    given = {field.name: getattr(args, field.name) for field in dataclasses.fields(config_class)
             if getattr(args, field.name, _UNSET) is not _UNSET}
    if hasattr(config_class, "from_preset"):
        return config_class.from_preset(getattr(args, "preset", "default"), **given)
    return config_class(**given)


def _add_data_flags(parser, tfds_default="tf_flowers"):
    group = parser.add_argument_group("data and backbone")
    group.add_argument("--hub_url", default=config_lib.DEFAULT_HUB_URL, metavar="HANDLE",
                       help="TF Hub or Kaggle Models URL or handle, or a local SavedModel "
                            "folder of an image feature vector, a Keras model's "
                            "`model.export` included (see --input_range) (default: "
                            "MobileNetV2 1.0 224).")
    group.add_argument("--image_dir", metavar="DIR",
                       help="Folder with one subfolder of images per class.")
    group.add_argument("--validation_dir", metavar="DIR",
                       help="Validation image folder (default: a seeded stratified "
                            "`validation_split` of the training images).")
    group.add_argument("--tfds_name", default=tfds_default, metavar="NAME",
                       help="TFDS dataset, used when --image_dir is not given "
                            f"(default: {tfds_default}).")
    group.add_argument("--data_dir", metavar="DIR", help="TFDS data folder.")
    add_block_pattern_flag(group)


def add_block_pattern_flag(parser):
    """`--block_pattern`, for modules whose variable names no block rule knows
    (`tfhub_ft inspect` takes it too)."""
    parser.add_argument("--block_pattern", metavar="REGEX",
                        help="How the backbone's variables group into blocks, for a module "
                             "whose names the built-in rules do not know: a regular "
                             "expression whose first group (without a group, its whole "
                             "match) names a variable's block.")


def _add_run_flags(parser):
    group = parser.add_argument_group("run")
    group.add_argument("--distribution_strategy", default="default", metavar="NAME",
                       help="tf.distribute strategy: default, mirrored, multi_worker or tpu "
                            "(default: default).")
    group.add_argument("--tpu", metavar="NAME", help="TPU name or address for "
                       "--distribution_strategy=tpu.")
    add_verbosity_flag(parser)


def add_verbosity_flag(parser):
    """`--verbosity`, which the command reads before a subcommand's own parser
    (`tfhub_ft predict` and `inspect` accept it too)."""
    parser.add_argument("--verbosity", type=int, default=0, metavar="N",
                        help="-1: warnings and results only; 0: also one line per stage "
                             "and epoch (default); 1: also TensorFlow's INFO lines and "
                             "start-up messages; 2: also debug lines.")


# Flags of `tfhub_ft train` beyond the config's (the README's table lists both).
TRAIN_OUTPUT_FLAGS = ("export_dir", "export_backbone_dir", "work_dir", "report_dir",
                      "tensorboard_dir")
TRAIN_INPUT_FLAGS = ("hub_url", "image_dir", "validation_dir", "tfds_name", "data_dir")
TFLITE_CHOICES = ("none", "float32", "float16", "dynamic", "int8")


def build_parser():
    """The command's argparse parser, subcommands included."""
    parser = _Parser(prog=PROG, description="Fine-tune a TF Hub image feature vector "
                     "into an image classifier, and use it.")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    train = commands.add_parser(
        "train", help="Fine-tune a hub backbone on image folders or a TFDS dataset.",
        description="Trains the head, fine-tunes the top blocks, and exports.")
    _add_data_flags(train)
    group = train.add_argument_group("outputs")
    group.add_argument("--export_dir", metavar="DIR", help="Where to write the SavedModel.")
    group.add_argument("--tflite", default="none", choices=TFLITE_CHOICES,
                       help="Also write model.tflite and its parity report in --export_dir: "
                            "float32, float16, dynamic (int8 weights) or int8 (full integer) "
                            "(default: none).")
    group.add_argument("--export_backbone_dir", metavar="DIR", help="Where to write the "
                       "fine-tuned backbone as a TF Hub module.")
    group.add_argument("--work_dir", metavar="DIR", help="Checkpoint folder: rerunning the "
                       "same command resumes an interrupted run.")
    group.add_argument("--report_dir", metavar="DIR", help="Where to write the run report "
                       "(curves, confusion matrix, per-class metrics, mistakes, summary).")
    group.add_argument("--tensorboard_dir", metavar="DIR", help="TensorBoard logs, one run "
                       "per phase (loss, accuracy, learning rate per epoch).")
    add_config_flags(train)
    _add_run_flags(train)

    evaluate = commands.add_parser(
        "evaluate", help="Score an exported model on an image folder.",
        description="Loads an export (its SavedModel or .tflite file and labels.txt, "
                    "nothing else) and prints accuracy and per-class precision, recall and F1.")
    evaluate.add_argument("--model", required=True, metavar="EXPORT",
                          help="Export folder written by `tfhub_ft train --export_dir`, or "
                               "its model.tflite (scores the quantized model).")
    evaluate.add_argument("--image_dir", required=True, metavar="DIR",
                          help="Folder with one subfolder of images per class.")
    evaluate.add_argument("--batch_size", type=int, default=config_lib.FineTuneConfig().batch_size,
                          metavar="N", help="Images per call of the model.")
    evaluate.add_argument("--report_dir", metavar="DIR", help="Also write "
                          "confusion_matrix.png/.csv, per_class.csv, mistakes.png/.csv there.")
    add_verbosity_flag(evaluate)

    lr_find = commands.add_parser(
        "lr_find", help="Learning-rate range test of a phase, on cached activations.",
        description="Runs the learning-rate range test (Smith 2017; fastai's lr_find) and "
                    "writes loss against learning rate.")
    _add_data_flags(lr_find)
    lr_find.add_argument("--phase", default="head", choices=("head", "fine_tune"),
                         help="Which phase's rate to find (default: head).")
    lr_find.add_argument("--min_learning_rate", type=float, default=1e-7, metavar="RATE")
    lr_find.add_argument("--max_learning_rate", type=float, default=10.0, metavar="RATE")
    lr_find.add_argument("--steps", type=int, default=100, metavar="N",
                         help="Steps of the test, one rate each (default: 100).")
    lr_find.add_argument("--plot_path", default="lr_find.png", metavar="PNG",
                         help="Where to write the plot (default: lr_find.png).")
    add_config_flags(lr_find)
    _add_run_flags(lr_find)

    for name, text in DELEGATED_COMMANDS.items():
        commands.add_parser(name, help=text, add_help=False)
    return parser


# ----------------------------------------------------------------------------
# Quiet start-up and logging.

def import_tensorflow_quietly(verbosity):
    """Imports TensorFlow with its C++ start-up chatter turned down.

    At verbosity 0, TF_CPP_MIN_LOG_LEVEL=2 hides the INFO and WARNING lines
    of TensorFlow's C++ runtime, and the lines it prints while its shared
    libraries load, which ignore that level, are filtered out
    (`native_stderr.import_tensorflow_quietly`).
    """
    if verbosity >= 1:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "0")
        import tensorflow  # noqa: F401
        return
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    native_stderr.import_tensorflow_quietly()


class _Formatter(logging.Formatter):
    def format(self, record):
        message = super().format(record)
        if record.name.startswith("tfhub_ft"):
            message = as_typed(message)
        if record.levelno >= logging.WARNING:
            return f"{record.levelname}: {message}"
        return message


_OPTION_VALUE = None


def _train_flag_names():
    """The option names (`dest`) of `tfhub_ft train`'s flags, read from its
    parser (argparse lists a parser's actions only in `_actions`)."""
    commands = next(action for action in build_parser()._actions
                    if isinstance(action, argparse._SubParsersAction))
    return {action.dest for action in commands.choices["train"]._actions
            if action.option_strings}


def as_typed(text):
    """The library's `option=value` advice as the command's user types it.

    The library's messages name Python arguments ("pass
    class_weight='balanced'", "Received: time_budget_s=0"); on the command
    line those are flags: `--class_weight=balanced`, `--time_budget=0` (a
    field's `FLAG_ALIASES` name where it has one).
    Options of the train command (the config's fields and its own flags)
    standing as words (at the start, after a space or a bracket: not inside
    a path such as runs/seed=1) are rewritten; a value in brackets (a
    tuple) is left as it is.
    """
    global _OPTION_VALUE
    if _OPTION_VALUE is None:
        names = sorted(_train_flag_names(), key=len, reverse=True)
        _OPTION_VALUE = re.compile(
            r"(?<![^\s(])(" + "|".join(names) + r")="
            r"(?![(\[{])(?:'([^']*)'|\"([^\"]*)\"|([^\s,;)'\"]+))")

    def flag(match):
        value = next(group for group in match.groups()[1:] if group is not None)
        end = ""
        if match.group(4) is not None and value.endswith("."):
            value, end = value[:-1], "."  # the sentence's end, not the value's
        # The flag README shows: `--time_budget`, not `--time_budget_s`.
        name = FLAG_ALIASES.get(match.group(1), (match.group(1),))[0]
        return f"--{name}={shlex.quote(value)}{end}"
    return _OPTION_VALUE.sub(flag, text)


def configure_logging(verbosity):
    """Python logging for the command: one handler on stderr, levels by verbosity."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_Formatter("%(message)s"))
    root = logging.getLogger()
    for existing in list(root.handlers):
        root.removeHandler(existing)
    root.addHandler(handler)
    root.setLevel(logging.INFO if verbosity >= 1 else logging.WARNING)
    ours = logging.DEBUG if verbosity >= 2 else logging.INFO if verbosity >= 0 else logging.WARNING
    logging.getLogger("tfhub_ft").setLevel(ours)
    for name in ("tensorflow", "absl"):
        logging.getLogger(name).setLevel(logging.INFO if verbosity >= 1 else logging.WARNING)
    logging.captureWarnings(True)
    if verbosity < 1:
        # Deprecation notices of the libraries underneath ask nothing of the user.
        import warnings
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)


# ----------------------------------------------------------------------------
# Subcommands.


def _check_folder(name, path):
    if path and not os.path.isdir(path):
        raise ValueError(
            f"Invalid value for `{name}`. Expected a folder with one subfolder of images "
            f"per class. Received: {name}={path!r}, which is not a folder.")


def _check_writable(name, path):
    """Fails before training, not after, where an output cannot be written."""
    if path:
        checks.check_writable_folder(name, path)


def _check_outside_exports(args):
    """Refuses what an export would delete: each export replaces its folder
    whole, so the other export, the work and TensorBoard folders (written
    before it) and the inputs must not be in it. (A report written into the
    export folder after it is fine.)"""
    exports = {name: getattr(args, name)
               for name in ("export_dir", "export_backbone_dir") if getattr(args, name)}
    local = [not checks.is_url(folder) for folder in exports.values()]
    if len(exports) == 2 and local[0] == local[1] and (
            checks.is_within(args.export_backbone_dir, args.export_dir)
            or checks.is_within(args.export_dir, args.export_backbone_dir)):
        # Inside the classifier's export, the backbone's would be refused
        # after training (an export is not written into another); around
        # it, the backbone's export would delete it.
        raise ValueError(
            "Invalid value for `export_backbone_dir`. Expected a folder neither `export_dir` "
            "nor inside or around it: each export replaces its whole folder. Received: "
            f"export_backbone_dir={args.export_backbone_dir!r}, export_dir={args.export_dir!r}. "
            "Choose a folder beside it.")
    for name in ("work_dir", "tensorboard_dir", "image_dir", "validation_dir", "hub_url",
                 "data_dir"):
        value = getattr(args, name, None)
        if not value or checks.is_url(value):
            continue
        for export_name, folder in exports.items():
            if checks.is_within(value, folder):
                raise ValueError(
                    f"Invalid value for `{name}`. Expected a folder outside `{export_name}`, "
                    f"which the export replaces whole. Received: {name}={value!r} in "
                    f"{export_name}={folder!r}. Choose a folder beside it.")


def _check_outside_image_folders(args):
    """Refuses an output inside an image folder: the next run on that folder
    would read it as a class folder (a report's PNGs as training images)."""
    for folder_name in ("image_dir", "validation_dir"):
        folder = getattr(args, folder_name, None)
        if not folder:
            continue
        for name in TRAIN_OUTPUT_FLAGS:
            checks.check_outside_image_folder(name, getattr(args, name, None) or None,
                                              f"`{folder_name}`", folder)


def _train(args):
    """`tfhub_ft train`. `args.start_time` (a `time.monotonic` reading, set
    by `main`) is when the command started, where `--time_budget` counts
    from (when the tuner is created if missing)."""
    started = getattr(args, "start_time", None) or time.monotonic()
    config = config_from_args(args)
    _check_folder("image_dir", args.image_dir)
    _check_folder("validation_dir", args.validation_dir)
    # Both are folders here (`_check_folder`).
    if (args.image_dir and args.validation_dir
            and os.path.samefile(args.image_dir, args.validation_dir)):
        # The library only warns (a deliberate check on the training images
        # is a Python user's call); on the command line it is a slip.
        raise ValueError(
            "Invalid value for `validation_dir`. Expected images other than the training "
            "images: a score on them measures memory, not new images. Received: "
            f"validation_dir={args.validation_dir!r}, the folder of image_dir. Pass a "
            "folder of other images, or leave validation_dir out to hold out "
            "validation_split of the training images.")
    for name in TRAIN_OUTPUT_FLAGS:
        _check_writable(name, getattr(args, name))
    from tfhub_ft import export

    _check_outside_exports(args)
    for name, kind in (("export_dir", "classifier"), ("export_backbone_dir", "backbone")):
        # Refused after training would waste the training.
        if getattr(args, name):
            export.check_replaceable(getattr(args, name), name, kind)
    _check_outside_image_folders(args)
    from tfhub_ft import time_budget

    time_budget.check_time_budget_use(config.time_budget_s, args.work_dir,
                                      args.distribution_strategy == "multi_worker")
    # After every check: a usage error is then the only line.
    if not args.export_dir:
        logger.warning("No --export_dir: the trained classifier will not be saved "
                       "(pass --export_dir=FOLDER to keep it).")
    import tfhub_ft
    from tfhub_ft import distribution

    strategy = distribution.get_strategy(args.distribution_strategy, args.tpu)
    tuner = tfhub_ft.FineTuner(args.hub_url, config=config, strategy=strategy,
                               block_pattern=args.block_pattern,
                               start_time=getattr(args, "start_time", None))
    if args.export_dir and args.tflite != "none":
        from tfhub_ft import tflite

        tflite.check_backbone(tuner.backbone, args.tflite)  # Refused after training would waste it.
    # The budget's reserve covers the final validation and the export; the
    # command adds its process's exit (TensorFlow's teardown).
    options = dict(work_dir=args.work_dir, tensorboard_dir=args.tensorboard_dir,
                   verbose=0 if args.verbosity < 0 else "auto",
                   budget_reserve_s=config_lib.TIME_BUDGET_EXIT_S if config.time_budget_s else 0.0)
    if args.image_dir:
        tuner.fit(args.image_dir, validation=args.validation_dir, **options)
    else:
        tuner.fit(args.tfds_name, data_dir=args.data_dir, **options)
    metrics = tuner.validation_metrics
    print(f"validation_accuracy={metrics['accuracy']:.4f} images={metrics['count']} "
          f"fit_seconds={time.monotonic() - started:.1f}", flush=True)
    if args.export_dir:
        # Every worker of a multi-worker run exports; only the chief writes.
        exported = tuner.export(args.export_dir,
                                tflite=None if args.tflite == "none" else args.tflite)
        if exported:
            print("exported", exported, flush=True)
    if args.export_backbone_dir:
        exported = tuner.export_backbone(args.export_backbone_dir)
        if exported:
            print("exported backbone", exported, flush=True)
    if args.report_dir and strategy.extended.should_checkpoint:
        tuner.report(args.report_dir)
        print("report", os.path.abspath(args.report_dir), flush=True)
    if args.tensorboard_dir:
        print("tensorboard", os.path.abspath(args.tensorboard_dir), flush=True)
    return 0


def display_width(text):
    """Columns `text` takes in a terminal: East Asian wide and full-width
    characters take two (Unicode TR 11), combining marks none."""
    return sum(0 if unicodedata.combining(char)
               else 2 if unicodedata.east_asian_width(char) in "WF" else 1
               for char in text)


def per_class_table(rows):
    """`evaluate`'s table as lines: one per class, then the averages.

    Args:
        rows: `report.per_class_metrics` rows (class, precision, recall, f1,
            support), the last two the macro and weighted averages.

    Returns:
        Lines with the columns aligned by display width (a Japanese class
        name is padded for two columns a character); a recall or F1 of None
        (a class with no image: undefined) shows as '-'.
    """
    width = max(display_width(row["class"]) for row in rows + [{"class": "class"}])

    def padded(name):
        return name + " " * (width - display_width(name))

    lines = [f"{padded('class')}  precision  recall      f1  support"]
    for row in rows:
        recall, f1 = (f"{'-':>6}" if row[key] is None else f"{row[key]:6.4f}"
                      for key in ("recall", "f1"))
        lines.append(f"{padded(row['class'])}  {row['precision']:9.4f}  {recall}  {f1}  "
                     f"{row['support']:7d}")
    return lines


def _evaluate(args):
    _check_folder("image_dir", args.image_dir)
    _check_writable("report_dir", args.report_dir)
    from tfhub_ft import evaluation

    result = evaluation.evaluate_export(args.model, args.image_dir, args.batch_size)
    print(f"accuracy={result['accuracy']:.4f} loss={result['loss']:.4f} "
          f"images={result['count']}")
    for line in per_class_table(result["per_class"]):
        print(line)
    absent = [row["class"] for row in result["per_class"][:-2] if row["support"] == 0]
    if absent:
        # An explanation, not a result: the log, not stdout.
        logger.info("%d of the model's %d classes %s no image here (recall and F1 '-'); the "
                    "macro average leaves them out unless they were predicted.", len(absent),
                    len(result["class_names"]), "has" if len(absent) == 1 else "have")
    if args.report_dir:
        evaluation.write_evaluation_report(result, args.report_dir)
        print("report", os.path.abspath(args.report_dir))
    return 0


def _lr_find(args):
    config = config_from_args(args)
    _check_folder("image_dir", args.image_dir)
    _check_folder("validation_dir", args.validation_dir)
    _check_writable("plot_path", os.path.dirname(os.path.abspath(args.plot_path)))
    import tfhub_ft
    from tfhub_ft import distribution

    strategy = distribution.get_strategy(args.distribution_strategy, args.tpu)
    tuner = tfhub_ft.FineTuner(args.hub_url, config=config, strategy=strategy,
                               block_pattern=args.block_pattern)
    source = args.image_dir or args.tfds_name
    finding = tuner.find_learning_rate(
        source, phase=args.phase, validation=args.validation_dir if args.image_dir else None,
        data_dir=args.data_dir, min_learning_rate=args.min_learning_rate,
        max_learning_rate=args.max_learning_rate, steps=args.steps, plot_path=args.plot_path)
    flag = "head_learning_rate" if args.phase == "head" else "fine_tune_learning_rate"
    print(f"suggested_learning_rate={finding.suggestion:.2e} (--{flag}={finding.suggestion:.2e})")
    # How it was chosen is an explanation, not a result: the log, not stdout.
    logger.info("How the rate was chosen: %s", finding.rule)
    print("plot", os.path.abspath(finding.plot_path))
    return 0


def _delegate(name, argv):
    import importlib

    try:
        module = importlib.import_module(f"tfhub_ft.{name}")
    except ModuleNotFoundError as error:
        if error.name != f"tfhub_ft.{name}":
            raise
        raise UsageError(f"`{PROG} {name}` is not available in this build "
                         f"(no tfhub_ft.{name} module).") from None
    return module.main(argv)


COMMANDS = {"train": _train, "evaluate": _evaluate, "lr_find": _lr_find}


# ----------------------------------------------------------------------------
# Errors and the entry point.


def _raised_by_library(error):
    """Whether `error` was raised by a `raise` statement in tfhub_ft's code."""
    if isinstance(error, UsageError):
        return True
    traceback = error.__traceback__
    if traceback is None:
        return False
    while traceback.tb_next is not None:
        traceback = traceback.tb_next
    filename = os.path.abspath(traceback.tb_frame.f_code.co_filename)
    if not filename.startswith(_PACKAGE_DIR + os.sep):
        return False
    return linecache.getline(filename, traceback.tb_lineno).strip().startswith("raise")


def _one_line(command, error, limit=600):
    text = as_typed(" ".join(str(error).split()))
    if len(text) > limit:
        # Keep the start (what is wrong) and the end (usually the fix); an
        # upstream message can list hundreds of names in between.
        text = f"{text[:limit - 250]} ... {text[-200:]}"
    return f"{PROG}{' ' + command if command else ''}: error: {text}"


def _forget_easy_install_requirement():
    """Workaround for pypa/setuptools#3146 (pkg_resources does not find a
    dotted distribution name installed with underscores).

    `pip install -e .` of a project without pyproject.toml runs setuptools'
    legacy `setup.py develop`, whose console script sets
    `__main__.__requires__` "for compatibility with easy_install". The first
    import of `pkg_resources` (tensorflow_hub imports it, for any handle
    that is not a local folder) then resolves this project's whole
    dependency tree, and with the setuptools of this machine (65.5) fails on
    ai-edge-litert's `backports.strenum`, installed as `backports_strenum`:
    `DistributionNotFound`, a traceback instead of the command. Nothing else
    reads the marker, so it is dropped before anything imports
    `pkg_resources`; a script without it (pip's own, `python -m tfhub_ft`)
    is left alone. Should `pkg_resources` already be imported here, the
    resolution has already succeeded and there is nothing to undo.
    """
    vars(sys.modules["__main__"]).pop("__requires__", None)


def run(argv=None):
    """The console entry point (`tfhub_ft`, `python -m tfhub_ft`,
    examples/flowers.py): `main`, then a fast exit.

    With TensorFlow loaded, the interpreter's own teardown after a run takes
    about 2 s the user waits for at the end of every command (measured in
    BUILD_NOTES.md). Once `main` has returned (its files written and
    renamed into place), the output is flushed, the exit handlers run (the
    spill folders are removed there) and the process ends without that
    teardown. Where CPython's `atexit._run_exitfuncs` is missing, the exit
    is the normal one.
    """
    _forget_easy_install_requirement()
    status = int(main(argv) or 0)
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)
    if run_exit_handlers is None:
        sys.exit(status)
    sys.stdout.flush()
    sys.stderr.flush()
    run_exit_handlers()  # logging's shutdown is one of them
    os._exit(status)


def main(argv=None):
    """Runs the command; returns its exit status (0, 2 for an error, 130
    after Ctrl-C, 143 after SIGTERM, 129 after SIGHUP: each cleans up and
    says how to resume).

    Args:
        argv: The arguments after the program name; `sys.argv[1:]` when None.
    """
    with _sigterm_as_interrupt():
        return _main(argv)


class Terminated(KeyboardInterrupt):
    """SIGTERM (a scheduler's or `kill`'s stop) or SIGHUP (the terminal
    closed, an ssh connection dropped), raised where the process is, so the
    same clean-up runs as for Ctrl-C: the spill files and an unfinished
    export's staging folder are removed, and the log says so.

    Attributes:
        signum: The signal's number.
    """

    def __init__(self, signum):
        super().__init__()
        self.signum = signum


@contextlib.contextmanager
def _sigterm_as_interrupt():
    # Python's default for SIGTERM and SIGHUP ends the process at once: no
    # `finally`, no exit handlers, spill files of hundreds of MB left in
    # the temp folder.
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(signum)
    # One inherited as ignored stays so: `nohup` runs outlive their terminal.
    signums = [signum for signum in (signal.SIGTERM, signal.SIGHUP)
               if signal.getsignal(signum) is not signal.SIG_IGN]
    previous = {signum: signal.signal(signum, terminate) for signum in signums}
    try:
        yield
    finally:
        for signum in signums:
            signal.signal(signum, previous[signum])


def _main(argv):
    started = time.monotonic()  # where `train --time_budget` counts from
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv[0] if argv and not argv[0].startswith("-") else None
    args = None
    try:
        if command in DELEGATED_COMMANDS:
            verbosity = _verbosity_of(argv)
            configure_logging(verbosity)
            import_tensorflow_quietly(verbosity)
            with _library_temporary_files():
                return _delegate(command, argv[1:]) or 0
        args = build_parser().parse_args(argv)
        configure_logging(args.verbosity)
        import_tensorflow_quietly(args.verbosity)
        args.start_time = started
        with _library_temporary_files():
            return COMMANDS[args.command](args)
    # ImportError: the library names a missing package with its pip command
    # (load_tfds); one raised elsewhere keeps its traceback.
    except (ValueError, TypeError, ImportError) as error:
        if not _raised_by_library(error):
            raise
        sys.stdout.flush()
        print(_one_line(command, error), file=sys.stderr, flush=True)
        return EXIT_ERROR
    except Exception as error:
        full = _disk_full(error)
        if full is None:
            raise
        sys.stdout.flush()
        print(f"{PROG}: no space left on the device ({full}). Free space there, or write "
              "elsewhere: --export_dir, --work_dir, and TMPDIR for the spill files past "
              f"--cache_memory_mb{_resume_hint(args)}", file=sys.stderr, flush=True)
        return EXIT_ERROR
    except KeyboardInterrupt as interrupt:
        signum = interrupt.signum if isinstance(interrupt, Terminated) else signal.SIGINT
        what = ("interrupted" if signum == signal.SIGINT
                else f"terminated ({signal.Signals(signum).name})")
        with contextlib.suppress(OSError):  # a terminal that hung up
            print(f"{PROG}: {what}{_resume_hint(args)}", file=sys.stderr)
        # The shell's status for a process a signal ended: 128 + its number
        # (130 for SIGINT, 143 for SIGTERM, 129 for SIGHUP).
        return 128 + signum


# The prefix of a command's own temporary folder (`scratch.make_folder`).
COMMAND_TEMPORARY_KIND = "tfhub_ft_command"


def _library_temporary_files():
    """A temporary folder of the command's own for the libraries' files.

    TensorFlow's autograph writes a module per function it converts into
    the temporary folder and removes them only in an exit handler
    (`tensorflow/python/autograph/pyct/loader.py`), so a killed command
    left dozens there for good. In this folder (`scratch`'s naming) a
    later command removes them, with the spill files made there too.
    Spill folders that Python runs left in the temporary folder itself are
    swept first, as a run's own sweep would have. Only on the main thread:
    `tempfile.tempdir` is the process's, and a command run from another
    thread shares the process with others.
    """
    if threading.current_thread() is not threading.main_thread():
        return contextlib.nullcontext()
    from tfhub_ft import arrays
    arrays.remove_abandoned_spill()
    return scratch.temporary_folder_for_libraries(COMMAND_TEMPORARY_KIND,
                                                  "the temporary files of a command")


def _disk_full(error):
    """For an error a full disk caused (an OSError with ENOSPC, or
    TensorFlow's error saying "No space left on device", anywhere in its
    chain of causes), where: the file it names, else its message; else None."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        if isinstance(error, OSError) and error.errno == errno.ENOSPC:
            return error.filename or error.strerror
        message = getattr(error, "message", None) or str(error)
        if "No space left on device" in message:
            return message.strip().splitlines()[0]
        error = error.__cause__ or error.__context__
    return None


def _resume_hint(args):
    """What an interrupted command's last line adds: how to resume."""
    if getattr(args, "command", None) != "train":
        return ""
    work_dir = args.work_dir
    if not work_dir:
        return ("; nothing was kept (pass --work_dir=FOLDER to make a run resumable: "
                "every epoch is saved there)")
    # checkpoints.STATE_FILE, named here without importing TensorFlow; a
    # URL (gs://) cannot be looked at without it.
    if not checks.is_url(work_dir) and not os.path.exists(os.path.join(work_dir, "state.json")):
        return ("; it had not started training, so there is nothing to resume in "
                f"--work_dir={shlex.quote(work_dir)}")
    return f"; the same command resumes it from --work_dir={shlex.quote(work_dir)}"


def _verbosity_of(argv):
    for index, arg in enumerate(argv):
        if arg.startswith("--verbosity="):
            value = arg.split("=", 1)[1]
        elif arg == "--verbosity" and index + 1 < len(argv):
            value = argv[index + 1]
        else:
            continue
        try:
            return int(value)
        except ValueError:
            raise UsageError(f"argument --verbosity: invalid int value: {value!r}") from None
    return 0
