"""Checks shared by the kill-and-resume tests (one process, two workers)."""

import json
import os

import numpy as np
import tensorflow as tf

from tfhub_ft import checkpoints


def read_state(work_dir):
    """The run's state.json as a dict; None while it is not written yet."""
    try:
        with open(os.path.join(work_dir, checkpoints.STATE_FILE)) as file:
            return json.load(file)
    except (OSError, ValueError):  # not written yet
        return None


def saved_variables(export_dir):
    """{name: value} of every variable of an exported SavedModel."""
    reader = tf.train.load_checkpoint(os.path.join(export_dir, "variables", "variables"))
    return {name: reader.get_tensor(name) for name in reader.get_variable_to_shape_map()
            if "OBJECT_GRAPH" not in name}


def assert_same_variables(first, second):
    """Asserts that two exports hold the same variables, bit for bit."""
    first, second = saved_variables(first), saved_variables(second)
    assert sorted(first) == sorted(second)
    different = [name for name in first if not np.array_equal(first[name], second[name])]
    assert different == []


def export_leftovers(folder):
    """An export, or a staging folder of one, in `folder` (a list of names)."""
    if not os.path.isdir(folder):
        return []
    return sorted(name for name in os.listdir(folder)
                  if name == "export" or name.startswith(".export"))
