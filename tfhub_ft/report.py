"""The run report: what a fine-tuning run did, as plots, tables and JSON.

`write_report` (and `FineTuner.report`) write into one folder:

    curves.png            loss and accuracy per epoch, training and
                          validation, both phases on one epoch axis,
                          fine-tuning on a grey band, a star on the
                          weights the model kept
    confusion_matrix.png  validation confusion matrix: counts, shaded by
                          row-normalised share (recall per true class)
    confusion_matrix.csv  the counts, rows true classes, columns predicted
    per_class.csv         precision, recall, F1 and support per class,
                          then macro and weighted averages
    mistakes.png          the most confidently wrong validation images, as
                          the model sees them, titled rank, class folder
                          and file name, predicted and true class with
                          their probabilities
    mistakes.csv          every wrong validation image, most confident
                          first: rank, file (or index), true and predicted
                          class, both classes' probabilities
    summary.json          config, hub handle, blocks unfrozen, image counts,
                          skipped files, seconds per stage, metrics, the
                          most confused pairs of classes, the kept epoch
    index.html            one page over the rest: the headline numbers,
                          the plots, the per-class table (open it in a
                          browser)

Metrics come from scikit-learn (`sklearn.metrics`); plots from matplotlib
with the Agg backend, so no display is needed.
"""

import contextlib
import csv
import json
import logging
import os
import re
import warnings

import numpy as np

from tfhub_ft.image_files import display_path

logger = logging.getLogger(__name__)

CURVES_FILE = "curves.png"
CONFUSION_MATRIX_FILE = "confusion_matrix.png"
CONFUSION_MATRIX_CSV = "confusion_matrix.csv"
PER_CLASS_FILE = "per_class.csv"
MISTAKES_FILE = "mistakes.png"
MISTAKES_CSV = "mistakes.csv"
SUMMARY_FILE = "summary.json"
INDEX_FILE = "index.html"
REPORT_FILES = (CURVES_FILE, CONFUSION_MATRIX_FILE, CONFUSION_MATRIX_CSV, PER_CLASS_FILE,
                MISTAKES_FILE, MISTAKES_CSV, SUMMARY_FILE, INDEX_FILE)
PHASE_TITLES = {"head": "head (backbone frozen)", "fine_tune": "fine-tune"}
PER_CLASS_COLUMNS = ("class", "precision", "recall", "f1", "support")


# Fonts with scripts DejaVu Sans (matplotlib's own) lacks, used in this
# order for a character it has not, where installed (matplotlib >= 3.6
# falls back along `font.family`).
FALLBACK_FONTS = ("Noto Sans CJK JP", "Noto Sans CJK SC", "Noto Sans CJK KR",
                  "Droid Sans Fallback", "WenQuanYi Zen Hei", "Arial Unicode MS", "Noto Sans")


def pyplot():
    """matplotlib.pyplot on the Agg backend (files only, no display), with
    the installed `FALLBACK_FONTS` after matplotlib's default font (unless
    the user chose another)."""
    import matplotlib
    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt
    from matplotlib import font_manager
    installed = {font.name for font in font_manager.fontManager.ttflist}
    fallbacks = [name for name in FALLBACK_FONTS if name in installed]
    # Only over matplotlib's own default: a font the user chose stays.
    if fallbacks and list(plt.rcParams["font.family"]) == ["sans-serif"]:
        plt.rcParams["font.family"] = ["DejaVu Sans", *fallbacks]
    return plt


@contextlib.contextmanager
def _missing_glyphs_noted():
    """Turns matplotlib's warning per missing character and figure (six
    blocks for one Japanese class name) into one log line."""
    missing = {}  # in the order drawn: as the names spell them
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        yield
    for warning in caught:
        match = re.match(r"Glyph (\d+) .*missing from", str(warning.message))
        if match:
            missing.setdefault(chr(int(match.group(1))))
        else:
            warnings.warn_explicit(warning.message, warning.category, warning.filename,
                                   warning.lineno)
    if missing:
        logger.warning("The plots' fonts lack %s, used in class names: they show as boxes "
                       "in the PNG files (the CSV files and summary.json have them). "
                       "Install a font that has them, e.g. Noto Sans CJK, for matplotlib.",
                       "".join(missing))


def _check_predictions(labels, probabilities, class_names):
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    if probabilities.ndim != 2 or probabilities.shape != (len(labels), len(class_names)):
        raise ValueError(
            "Invalid value for `probabilities`. Expected shape [N, C] = "
            f"[{len(labels)}, {len(class_names)}] (one row per label, one column "
            f"per class). Received: shape {probabilities.shape}")
    return labels.astype(np.int64), probabilities


def confusion_matrix(labels, predictions, num_classes):
    """int64 [C, C]: row = true class, column = predicted class (sklearn)."""
    from sklearn import metrics
    return metrics.confusion_matrix(labels, predictions, labels=np.arange(num_classes))


def per_class_metrics(labels, predictions, class_names):
    """Precision, recall, F1 and support per class, then the two averages.

    Args:
        labels: int [N] true classes in [0, C).
        predictions: int [N] predicted classes in [0, C).
        class_names: C names.

    Returns:
        A list of dicts with keys `PER_CLASS_COLUMNS`: one per class in
        order, then "macro avg" (unweighted mean over the classes that occur
        in `labels` or `predictions`, as sklearn averages when given no
        label list: data holding some of the classes is not averaged with
        zeros for the others) and "weighted avg" (mean weighted by
        support). A class never predicted has precision 0 (sklearn's
        `zero_division=0`); one with no image has recall and F1 None: they
        are undefined there, not 0 (per_class.csv leaves them empty, the
        command prints '-').
    """
    from sklearn import metrics
    classes = np.arange(len(class_names))
    precision, recall, f1, support = metrics.precision_recall_fscore_support(
        labels, predictions, labels=classes, zero_division=0)
    rows = [{"class": name, "precision": float(p), "recall": float(r) if s else None,
             "f1": float(f) if s else None, "support": int(s)}
            for name, p, r, f, s in zip(class_names, precision, recall, f1, support)]
    seen = np.union1d(labels, predictions)
    for average in ("macro", "weighted"):
        p, r, f, _ = metrics.precision_recall_fscore_support(
            labels, predictions, labels=seen, average=average, zero_division=0)
        rows.append({"class": f"{average} avg", "precision": float(p), "recall": float(r),
                     "f1": float(f), "support": int(support.sum())})
    return rows


def write_per_class_csv(rows, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=PER_CLASS_COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: (f"{value:.6f}" if isinstance(value, float) else
                                   "" if value is None else value)
                             for key, value in row.items()})
    return path


def write_confusion_matrix_csv(matrix, class_names, path):
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["true \\ predicted", *class_names])
        for name, row in zip(class_names, matrix):
            writer.writerow([name, *(int(count) for count in row)])
    return path


def plot_curves(history, path, kept_epoch=None, loss_name=None):
    """Loss and accuracy per epoch of both phases on one epoch axis.

    Training is solid blue, validation dashed orange; each phase is named
    above the axes, the fine-tune phase on a grey band after the head's.
    Where `kept_epoch` is given, a star marks the validation values of the
    weights the model kept: early stopping may restore an epoch before the
    last, or the start of fine-tuning, and the curves' last points are then
    not the model's.

    Args:
        history: {"head": {...}, "fine_tune": {...}}, each a Keras history
            dict (loss, accuracy, val_loss, val_accuracy lists); a phase
            may be empty.
        path: The PNG to write.
        kept_epoch: None, or (phase, epoch): the epoch (1-based, within
            its phase) whose weights the model kept; ("fine_tune", 0) is
            the start of fine-tuning, the head phase's last epoch.
        loss_name: What the plotted loss is, for its axis
            ("cross-entropy, label smoothing 0.1": `recipe.loss_description`):
            the training loss, smoothed and weighted as trained, which is
            not summary.json's plain cross-entropy.
    """
    from matplotlib import ticker, transforms

    plt = pyplot()
    figure, axes = plt.subplots(1, 2, figsize=(12, 4.8), dpi=150)
    offset, spans = 0, {}
    for phase in ("head", "fine_tune"):
        record = history.get(phase) or {}
        epochs = len(record.get("loss", []))
        if not epochs:
            continue
        spans[phase] = (offset, epochs)
        x = np.arange(offset + 1, offset + epochs + 1)
        for axis, metric in zip(axes, ("loss", "accuracy")):
            for prefix, color, style, marker in (("", "tab:blue", "-", "s"),
                                                 ("val_", "tab:orange", "--", "o")):
                values = record.get(prefix + metric)
                if values:
                    # One legend entry per split, from the first phase drawn.
                    label = (None if len(spans) > 1
                             else "validation" if prefix else "training")
                    axis.plot(x[:len(values)], values, style, color=color, marker=marker,
                              markersize=4, linewidth=1.8, label=label)
        offset += epochs
    kept = _kept_point(spans, kept_epoch)
    for axis, metric in zip(axes, ("loss", "accuracy")):
        above = transforms.blended_transform_factory(axis.transData, axis.transAxes)
        for index, (phase, (start, epochs)) in enumerate(spans.items()):
            if index:
                axis.axvspan(start + 0.5, start + epochs + 0.5, color="0.92", zorder=0,
                             linewidth=0)
            axis.text(start + 0.5 + epochs / 2, 1.01, PHASE_TITLES[phase], transform=above,
                      ha="center", va="bottom", fontsize=9, color="0.35")
        if kept is not None:
            phase, epoch, x = kept
            values = history[phase].get("val_" + metric) or []
            if len(values) >= epoch:
                value = values[epoch - 1]
                axis.plot([x], [value], marker="*", markersize=15, color="black",
                          linestyle="none", zorder=5, label=f"kept weights (epoch {x})")
                axis.annotate(f"{value:.1%}" if metric == "accuracy" else f"{value:.3f}",
                              (x, value), textcoords="offset points", xytext=(0, 10),
                              ha="center", fontsize=9, fontweight="bold")
        axis.set_xlabel("epoch")
        if metric == "accuracy":
            axis.set_ylabel("accuracy (top-1)")
            axis.yaxis.set_major_formatter(ticker.PercentFormatter(1.0, decimals=0))
        else:
            axis.set_ylabel(f"loss ({loss_name})" if loss_name else "loss")
        axis.set_title(f"{metric.capitalize()} per epoch", pad=18)
        axis.grid(True, alpha=0.3)
        if offset:
            axis.set_xlim(0.5, offset + 0.5)
            axis.legend(fontsize=9)
            axis.xaxis.get_major_locator().set_params(integer=True)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def _kept_point(spans, kept_epoch):
    """(phase, epoch in it, x on the shared axis) of `kept_epoch`, the start
    of fine-tuning as the head phase's last epoch; None where not drawn."""
    if kept_epoch is None:
        return None
    phase, epoch = kept_epoch
    if phase == "fine_tune" and epoch == 0:
        phase, epoch = "head", spans.get("head", (0, 0))[1]
    if phase not in spans or not 1 <= epoch <= spans[phase][1]:
        return None
    return phase, epoch, spans[phase][0] + epoch


def plot_confusion_matrix(matrix, class_names, path, scored="validation images"):
    """Counts in each cell, shaded by the row-normalised share (recall on the
    diagonal); wrong predictions in bold, zeros off the diagonal left
    blank, so that the errors stand out; each true class with its image
    count.

    Args:
        matrix: int [C, C], rows true classes, columns predicted.
        class_names: C names (cut in the middle past 30 characters).
        path: The PNG to write.
        scored: Which images were scored, for the title ("validation
            images").
    """
    plt = pyplot()
    matrix = np.asarray(matrix)
    count = len(class_names)
    names = [_middle(name, 30) for name in class_names]
    totals = matrix.sum(axis=1)
    row_labels = [f"{name} ({int(total)})" for name, total in zip(names, totals)]
    # Inches for the tick labels, from the longest (about 0.075 in a character at 9 pt).
    margin = 0.075 * max((len(label) for label in row_labels), default=1) + 0.4
    side = min(0.45 * count + 2, 20)
    figure, axis = plt.subplots(figsize=(side + margin + 1.8, side + margin + 0.6),
                                dpi=150 if count <= 20 else 100)
    shares = np.divide(matrix, totals[:, None], out=np.zeros(matrix.shape, float),
                       where=totals[:, None] > 0)
    image = axis.imshow(shares, cmap="Blues", vmin=0, vmax=1)
    colorbar = figure.colorbar(image, ax=axis, fraction=0.046, pad=0.04)
    colorbar.set_label("share of the true class's images (recall on the diagonal)")
    if count <= 40:
        size = 10 if count <= 12 else 8
        for row in range(count):
            for column in range(count):
                value = int(matrix[row, column])
                if value == 0 and row != column:
                    continue
                axis.text(column, row, str(value), ha="center", va="center", fontsize=size,
                          fontweight="normal" if row == column else "bold",
                          color="white" if shares[row, column] > 0.5 else "black")
    axis.set_xticks(range(count))
    axis.set_yticks(range(count))
    axis.set_xticklabels(names, rotation=45 if count <= 20 else 90, ha="right",
                         rotation_mode="anchor", fontsize=9)
    axis.set_yticklabels(row_labels, fontsize=9)
    # White lines between the cells: a row or column is easier to follow.
    axis.set_xticks(np.arange(count + 1) - 0.5, minor=True)
    axis.set_yticks(np.arange(count + 1) - 0.5, minor=True)
    axis.grid(which="minor", color="white", linewidth=0.8)
    axis.tick_params(which="minor", length=0)
    axis.set_xlabel("predicted class")
    axis.set_ylabel("true class (images)")
    accuracy = np.trace(matrix) / max(matrix.sum(), 1)
    axis.set_title(f"Confusion matrix of {int(matrix.sum())} {scored}, "
                   f"accuracy {accuracy:.1%}")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
    return path


def most_confused(labels, predictions, class_names, count=3):
    """The pairs of classes most often confused, as fastai's
    `ClassificationInterpretation.most_confused`: the largest cells off the
    confusion matrix's diagonal. Counted with numpy, so that the training
    log's line does not import scikit-learn.

    Args:
        labels: int [N] true classes in [0, C).
        predictions: int [N] predicted classes in [0, C).
        class_names: C names.
        count: The most pairs returned.

    Returns:
        [(true name, predicted name, images)], most images first (ties in
        the order of the true, then the predicted class); only pairs seen.
    """
    labels, predictions = np.asarray(labels, np.int64), np.asarray(predictions, np.int64)
    wrong = labels != predictions
    pairs, counts = np.unique(np.stack([labels[wrong], predictions[wrong]], axis=1), axis=0,
                              return_counts=True)
    order = np.argsort(-counts, kind="stable")[:count]
    return [(class_names[pairs[i, 0]], class_names[pairs[i, 1]], int(counts[i]))
            for i in order]


def most_confident_mistakes(labels, probabilities, count=16):
    """Indices of wrong predictions, most confident first.

    Args:
        labels: int [N]; probabilities: float [N, C].
        count: The most indices returned; None for all.

    Returns:
        int64 [min(count, wrong)] indices into the N images.
    """
    labels = np.asarray(labels)
    probabilities = np.asarray(probabilities)
    predicted = probabilities.argmax(-1)
    wrong = np.flatnonzero(predicted != labels)
    confidence = probabilities[wrong, predicted[wrong]]
    return wrong[np.argsort(-confidence, kind="stable")][:count]


def plot_mistakes(images, labels, probabilities, class_names, path, names=None,
                  wrong_count=None, scored="validation images"):
    """A grid of images as the model saw them, each titled with its rank
    (the row of mistakes.csv), file name, the predicted and the true class
    with their probabilities (as fastai's `plot_top_losses`).

    Args:
        images: uint8 [K, S, S, 3], the wrongly classified images (see
            `most_confident_mistakes`), resized as the model takes them.
        labels: int [K] true classes; probabilities: float [K, C].
        class_names: C names.
        path: The PNG to write.
        names: None, or K file names for the titles (cut in the middle
            past 32 characters: the start and the extension stay).
        wrong_count: How many images were wrong in all (K when None).
        scored: Which images were scored, for the title ("validation
            images").
    """
    plt = pyplot()
    count = len(labels)
    columns = max(1, min(4, count))
    rows = max(1, -(-count // columns))
    figure, axes = plt.subplots(rows, columns, figsize=(3.4 * columns, 4.2 * rows + 0.7),
                                dpi=100, squeeze=False)
    for index, axis in enumerate(axes.flat):
        axis.axis("off")
        if index >= count:
            continue
        predicted, true = int(np.argmax(probabilities[index])), int(labels[index])
        axis.imshow(np.asarray(images[index], np.uint8))
        file_line = f"#{index + 1}" + ("" if names is None else f"  {_middle(names[index], 32)}")
        axis.set_title(f"{file_line}\n"
                       f"predicted: {_middle(class_names[predicted], 26)} "
                       f"({probabilities[index][predicted]:.0%})\n"
                       f"true: {_middle(class_names[true], 26)} "
                       f"({probabilities[index][true]:.0%})", fontsize=9)
    if count == 0:
        axes.flat[0].text(0.5, 0.5, f"None of the {scored} is misclassified.",
                          ha="center", va="center")
        title = f"Most confidently wrong {scored}"
    else:
        side = np.asarray(images).shape[1]
        title = (f"Most confidently wrong {scored}: {count} of "
                 f"{count if wrong_count is None else wrong_count} (all in {MISTAKES_CSV}), "
                 f"as the model sees them ({side}x{side})")
    figure.suptitle(title, fontsize=12)
    # Half an inch above the grid for the title, clear of the first row's titles.
    figure.tight_layout(rect=(0, 0, 1, 1 - 0.5 / figure.get_figheight()))
    figure.savefig(path)
    plt.close(figure)
    return path


def _middle(name, limit):
    """`name` cut in the middle to `limit` characters: names that differ at
    the end ("... Regular Cab 2012", "... Extended Cab 2012") and a file's
    extension stay."""
    if len(name) <= limit:
        return name
    keep = max(limit - 1, 0)
    return name[:keep - keep // 2] + "…" + name[len(name) - keep // 2:]


def write_mistakes_csv(labels, probabilities, class_names, path, paths=None):
    """Every wrong prediction, most confident first: `rank` (from 1, as
    titled in mistakes.png), `file` (the path, a name that is not UTF-8
    written with escapes as in the logs; or, when `paths` is None, the
    image's position in `labels`), `true`, `predicted`, `probability` (of
    the predicted class) and `true_probability` (of the true class), in
    [0, 1] with 6 decimals."""
    indices = most_confident_mistakes(labels, probabilities, count=None)
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["rank", "file", "true", "predicted", "probability",
                         "true_probability"])
        for rank, index in enumerate(indices, 1):
            predicted, true = int(np.argmax(probabilities[index])), int(labels[index])
            writer.writerow([rank, index if paths is None else display_path(paths[index]),
                             class_names[true], class_names[predicted],
                             f"{probabilities[index][predicted]:.6f}",
                             f"{probabilities[index][true]:.6f}"])
    return path


def write_report(report_dir, class_names, labels, probabilities, history=None,
                 mistake_images=None, mistake_indices=None, summary=None, paths=None,
                 kept_epoch=None, loss_name=None, scored="validation images"):
    """Writes the report files (see the module docstring) into `report_dir`.

    Args:
        report_dir: Folder, created if needed.
        class_names: C class names, in label order.
        labels: int [N] true validation classes.
        probabilities: float [N, C] predicted validation probabilities.
        history: {"head": ..., "fine_tune": ...} Keras histories; no
            curves.png without it.
        mistake_images: uint8 [K, H, W, 3], the images at `mistake_indices`
            (`most_confident_mistakes` of labels and probabilities); no
            mistakes.png without them.
        mistake_indices: int [K], indices into the N validation images.
        summary: Dict merged into summary.json (JSON-serialisable).
        paths: None, or the N validation images' files (for mistakes.csv
            and the titles of mistakes.png: class folder and file name).
        kept_epoch, loss_name: As `plot_curves`; `kept_epoch` is also
            written to summary.json.
        scored: Which images were scored, for the plots' titles
            ("validation images"; `evaluate` names its folder).

    Returns:
        {file name: path} of what was written.

    Raises:
        ValueError: if `probabilities` is not [N, C] or `report_dir` cannot
            be written.
    """
    labels, probabilities = _check_predictions(labels, probabilities, class_names)
    report_dir = os.fspath(report_dir)
    try:
        os.makedirs(report_dir, exist_ok=True)
    except OSError as error:
        raise ValueError(
            f"Invalid value for `report_dir`. Cannot create {report_dir!r}: {error}. "
            "Choose a folder you can write to.") from error
    join = lambda name: os.path.join(report_dir, name)  # noqa: E731
    written = {}
    predictions = probabilities.argmax(-1)
    matrix = confusion_matrix(labels, predictions, len(class_names))
    rows = per_class_metrics(labels, predictions, class_names)
    written[CONFUSION_MATRIX_CSV] = write_confusion_matrix_csv(
        matrix, class_names, join(CONFUSION_MATRIX_CSV))
    written[PER_CLASS_FILE] = write_per_class_csv(rows, join(PER_CLASS_FILE))
    written[MISTAKES_CSV] = write_mistakes_csv(labels, probabilities, class_names,
                                               join(MISTAKES_CSV), paths)
    with _missing_glyphs_noted():
        written[CONFUSION_MATRIX_FILE] = plot_confusion_matrix(
            matrix, class_names, join(CONFUSION_MATRIX_FILE), scored)
        if history is not None:
            written[CURVES_FILE] = plot_curves(history, join(CURVES_FILE), kept_epoch,
                                               loss_name)
        if mistake_images is not None:
            indices = np.asarray(mistake_indices, np.int64)
            # The class folder too: "0217.jpg" may be a cat and a bird.
            names = None if paths is None else [
                display_path(os.path.join(os.path.basename(os.path.dirname(paths[i])),
                                          os.path.basename(paths[i])))
                for i in indices]
            written[MISTAKES_FILE] = plot_mistakes(
                mistake_images, labels[indices], probabilities[indices], class_names,
                join(MISTAKES_FILE), names, wrong_count=int(np.sum(predictions != labels)),
                scored=scored)
    from sklearn import metrics
    content = dict(summary or {})
    content.setdefault("validation_metrics", {})
    content["validation_metrics"] = {
        **content["validation_metrics"],
        "accuracy": float(metrics.accuracy_score(labels, predictions)),
        "macro_f1": rows[-2]["f1"], "weighted_f1": rows[-1]["f1"],
        "count": int(len(labels))}
    content["most_confused"] = [
        {"true": true, "predicted": predicted, "images": images}
        for true, predicted, images in most_confused(labels, predictions, class_names)]
    content["class_names"] = list(class_names)
    if history is not None:
        content["history"] = history
    if kept_epoch is not None:
        content["kept_epoch"] = {"phase": kept_epoch[0], "epoch": int(kept_epoch[1])}
    with open(join(SUMMARY_FILE), "w", encoding="utf-8") as f:
        json.dump(_jsonable(content), f, indent=2)
    written[SUMMARY_FILE] = join(SUMMARY_FILE)
    written[INDEX_FILE] = write_index(join(INDEX_FILE), content, rows, written)
    _remove_stale_files(report_dir, written)
    logger.info("Wrote the report to %s (%s)", os.path.abspath(report_dir),
                ", ".join(sorted(written)))
    return written


def write_index(path, summary, rows, written):
    """index.html: one page over the report's files, beside them.

    Args:
        path: The HTML file to write.
        summary: What summary.json holds.
        rows: `per_class_metrics` rows.
        written: {file name: path} of the report's other files; the plots
            among them are shown, the rest linked.

    Returns:
        `path`.
    """
    from html import escape

    metrics = summary["validation_metrics"]
    facts = [f"accuracy {metrics['accuracy']:.1%} on {metrics['count']} images",
             f"macro F1 {metrics['macro_f1']:.3f}"]
    # Paths as the logs write them: a name that is not UTF-8 has escapes.
    for key, words in (("hub_handle", "backbone"), ("model", "model"),
                       ("image_dir", "images")):
        if summary.get(key):
            facts.append(f"{words} {display_path(str(summary[key]))}")
    kept = summary.get("kept_epoch")
    if kept:
        facts.append("weights kept: " + (
            f"{PHASE_TITLES[kept['phase']]} epoch {kept['epoch']}" if kept["epoch"] else
            "the start of fine-tuning (no fine-tuning epoch was better)"))
    if summary.get("most_confused"):
        facts.append("most confused (true -> predicted): " + ", ".join(
            f"{pair['true']} -> {pair['predicted']} ({pair['images']})"
            for pair in summary["most_confused"]))
    cell = lambda value: "" if value is None else (  # noqa: E731
        f"{value:.4f}" if isinstance(value, float) else str(value))
    table = "\n".join(
        "<tr>" + "".join(f"<td>{escape(cell(row[key]))}</td>" for key in PER_CLASS_COLUMNS)
        + "</tr>" for row in rows)
    plots = "\n".join(f'<p><img src="{name}" alt="{name}"></p>'
                       for name in (CURVES_FILE, CONFUSION_MATRIX_FILE, MISTAKES_FILE)
                       if name in written)
    links = " &middot; ".join(f'<a href="{name}">{name}</a>' for name in sorted(written)
                              if not name.endswith(".png"))
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>tfhub_ft report</title>
<style>body{{font-family:sans-serif;margin:2em;max-width:1850px}}
img{{max-width:100%}}td,th{{padding:2px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}</style></head><body>
<h1>tfhub_ft report</h1>
<ul>{"".join(f"<li>{escape(fact)}</li>" for fact in facts)}</ul>
{plots}
<h2>Per class</h2>
<table><tr>{"".join(f"<th>{name}</th>" for name in PER_CLASS_COLUMNS)}</tr>
{table}</table>
<p>{links}</p>
</body></html>
"""
    with open(path, "w", encoding="utf-8") as f:
        f.write(page)
    return path


def _remove_stale_files(report_dir, written):
    # A report written into an earlier one (`evaluate --report_dir` into a
    # training report) would otherwise leave curves of another run beside
    # this run's numbers. Only the report's own file names are touched.
    stale = [name for name in REPORT_FILES
             if name not in written and os.path.exists(os.path.join(report_dir, name))]
    for name in stale:
        os.remove(os.path.join(report_dir, name))
    if stale:
        logger.info("Removed %s from %s: left by an earlier report, not part of this one",
                    " and ".join(stale), os.path.abspath(report_dir))


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value
