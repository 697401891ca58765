"""The inlined call graph of a hub module: trace order and block splitting.

A restored SavedModel function is one opaque call op. Grappler's function
inlining turns it into a flat GraphDef whose nodes are the module's real
operations, which this module reads to order variables as data flows, and
cuts at a block boundary into a frozen bottom and a trainable top that run
on the module's own variables.

Real hub modules hold more than plain ops: Keras exports call one function
per layer (nested `StatefulPartitionedCall`s, which inlining flattens), and
TF-Slim exports pass `training` as a boolean tensor to `tf.cond`, around the
whole network or around each batch norm. Inlining lowers `If` / `Case` to
`Switch` / `Merge`; the inference call's predicate is a constant, so
`prune_untaken_branches` keeps the branch it takes and drops the other, and
the graph is again plain ops.
"""

import dataclasses
import functools
import logging
import re
from typing import Dict, List, Optional, Sequence

import numpy as np
import tensorflow as tf

from tfhub_ft import native_stderr

logger = logging.getLogger(__name__)
_GRAPPLER_NOISE = re.compile(native_stderr.glog_line(*native_stderr.GRAPPLER_SESSION))

_PASS_THROUGH = ("Identity", "IdentityN")
# Lowered to Switch/Merge by inlining, then resolved: their predicate is a
# constant in the inference call. Loops stay functional ops (a loop body is
# not a place to cut a backbone, and lowering them makes cycles).
_LOOP_OPS = ("While", "StatelessWhile")
_SWITCHES = ("Switch", "RefSwitch", "_SwitchN")
_MERGES = ("Merge", "RefMerge")
# Ops that multiply their input by a kernel (`KernelOp`): what weight
# quantization rounds.
_KERNEL_OPS = ("Conv2D", "DepthwiseConv2dNative", "MatMul")


def _source(input_name):
    return input_name.lstrip("^").split(":")[0]


def _port(input_name):
    parts = input_name.split(":")
    return int(parts[1]) if len(parts) > 1 else 0


def inline_call_graph(function):
    """Returns the GraphDef of a concrete function with every call inlined.

    Uses Grappler's function optimizer (the one pass enabled, aggressive
    mode, `If`/`Case` lowered to `Switch`/`Merge`, loops left as they are),
    then `prune_untaken_branches`. TensorFlow has no public API for this;
    `tests/test_module_graph.py` pins the behaviour relied on (nested calls
    flattened, `If` lowered) so that a TensorFlow upgrade that changes it
    fails there, loudly.

    Args:
        function: A `ConcreteFunction`.

    Returns:
        A `GraphDef` without function calls or conditionals (its library
        keeps the functions that loops, if any, still call).
    """
    # Grappler's Python entry point: the optimizer TensorFlow itself runs.
    from tensorflow.core.protobuf import config_pb2, meta_graph_pb2, rewriter_config_pb2
    from tensorflow.python.grappler import tf_optimizer

    graph_def = function.graph.as_graph_def()
    nodes = list(graph_def.node)
    for library_function in graph_def.library.function:
        nodes.extend(library_function.node_def)
        # A second implementation (api_implements, e.g. for GPU) would stop
        # the function from being inlined.
        if "api_implements" in library_function.attr:
            del library_function.attr["api_implements"]
    for node in nodes:
        if node.op in _LOOP_OPS:
            node.attr["_lower_using_switch_merge"].b = False
    meta_graph = tf.compat.v1.train.export_meta_graph(graph_def=graph_def,
                                                      graph=function.graph)
    # The fetch nodes tell Grappler what must be kept.
    fetch = meta_graph_pb2.CollectionDef()
    fetch.node_list.value.extend(t.name for t in function.inputs + function.outputs)
    meta_graph.collection_def["train_op"].CopyFrom(fetch)
    config = config_pb2.ConfigProto()
    rewrite = config.graph_options.rewrite_options
    rewrite.min_graph_nodes = -1
    rewrite.optimizers.append("function")
    rewrite.function_optimization = rewriter_config_pb2.RewriterConfig.AGGRESSIVE
    # Grappler's session logs two INFO lines per run, one per loaded module.
    with native_stderr.filtered(_GRAPPLER_NOISE, logger.debug):
        optimized = tf_optimizer.OptimizeGraph(config, meta_graph, verbose=False)
    return prune_untaken_branches(optimized)


def _constant_value(nodes, input_name):
    """The scalar value a tensor has when it is a constant (through
    Identity chains), or None."""
    node = nodes.get(_source(input_name))
    while node is not None and node.op == "Identity":
        node = nodes.get(_source(node.input[0]))
    if node is None or node.op != "Const":
        return None
    value = tf.make_ndarray(node.attr["value"].tensor)
    return value.item() if value.size == 1 else None


def prune_untaken_branches(graph_def):
    """Keeps the branch each constant-predicate conditional takes.

    A lowered conditional routes its inputs through `Switch` (`_SwitchN`
    for `Case`) nodes, whose predicate (branch index) here is a constant:
    only one output port is live. Every op fed only by a dead port is
    removed; a `Switch` becomes an `Identity` of its data, a `Merge` an
    `Identity` of its one live input. Conditionals whose predicate is not a
    constant are left as they are.

    Args:
        graph_def: An inlined `GraphDef`.

    Returns:
        A new `GraphDef`; the input is not changed.
    """
    nodes = {node.name: node for node in graph_def.node}
    live_port = {}
    for node in graph_def.node:
        if node.op not in _SWITCHES:
            continue
        value = _constant_value(nodes, node.input[1])
        if value is None:
            continue
        if node.op == "_SwitchN":
            branches = node.attr["num_outs"].i
            # Case runs its last branch for an index out of range.
            live_port[node.name] = value if 0 <= value < branches else branches - 1
        else:
            live_port[node.name] = int(bool(value))
    if not live_port:
        return graph_def
    consumers = {}
    for node in graph_def.node:
        for name in node.input:
            if not name.startswith("^"):
                consumers.setdefault(_source(name), []).append(node.name)

    def is_dead_input(name, dead):
        source = _source(name)
        if source in dead:
            return True
        return source in live_port and _port(name) != live_port[source]

    dead, frontier = set(), list(live_port)
    while frontier:
        for name in consumers.get(frontier.pop(), []):
            node = nodes[name]
            if name in dead:
                continue
            data_inputs = [i for i in node.input if not i.startswith("^")]
            dead_inputs = [is_dead_input(i, dead) for i in data_inputs]
            # A Merge is live while any of its inputs is.
            if (all(dead_inputs) if node.op in _MERGES else any(dead_inputs)):
                dead.add(name)
                frontier.append(name)
    pruned = tf.compat.v1.GraphDef()
    pruned.versions.CopyFrom(graph_def.versions)
    pruned.library.CopyFrom(graph_def.library)
    for node in graph_def.node:
        if node.name in dead:
            continue
        copy = pruned.node.add()
        copy.CopyFrom(node)
        inputs = [i for i in node.input if _source(i) not in dead]
        if node.op in _MERGES:
            live = [i for i in inputs if not i.startswith("^")
                    and not is_dead_input(i, dead)]
            inputs = live[:1] + [i for i in inputs if i.startswith("^")]
        if node.name in live_port or node.op in _MERGES:
            copy.op = "Identity"
            copy.input[:] = [inputs[0]] + [i for i in inputs[1:] if i.startswith("^")]
            data_type = copy.attr["T"].type
            copy.ClearField("attr")
            copy.attr["T"].type = data_type
            continue
        del copy.input[:]
        for name in inputs:
            source = _source(name)
            if not name.startswith("^") and source in live_port:
                # The Switch is now an Identity with one output.
                name = source
            elif not name.startswith("^") and nodes[source].op in _MERGES and _port(name) == 1:
                raise ValueError(f"{node.name} reads which branch {source} took; "
                                 "it cannot be resolved to plain ops.")
            copy.input.append(name)
    return pruned


def inference_function(module):
    """The module's concrete `__call__` for float32 images, inference mode.

    A concrete function restored with the module is preferred: under a
    `tf.distribute` strategy's scope, `get_concrete_function` traces a
    wrapper that looks the variables up per replica at call time, whose
    graph neither captures them nor holds the module's operations.
    """
    for function in getattr(module.__call__, "concrete_functions", []):
        args, kwargs = function.structured_input_signature
        images = args[0] if args else None
        training = args[1] if len(args) > 1 else kwargs.get("training", False)
        if (isinstance(images, tf.TensorSpec) and images.dtype == tf.float32
                and images.shape.rank == 4 and training is False
                and images.shape.is_compatible_with([None, None, None, 3])
                and function.captured_inputs):
            return function
    spec = tf.TensorSpec([None, None, None, 3], tf.float32)
    try:
        return module.__call__.get_concrete_function(spec, False)
    except (TypeError, ValueError):
        return module.__call__.get_concrete_function(spec)


class ModuleGraph:
    """The inlined inference graph of a hub module.

    Args:
        module: A loaded hub module with `__call__(images, training)`.
        variables: The module's variables, in the order indices refer to.
    """

    def __init__(self, module, variables):
        function = inference_function(module)
        self.graph_def = inline_call_graph(function)
        self.nodes = {node.name: node for node in self.graph_def.node}
        self.input_name = function.graph.inputs[0].name.split(":")[0]
        self.output_tensor = _inlined_output(function, self.nodes)
        # Data edges only: the control edges that inlining adds order side
        # effects and say nothing about where values flow.
        self.consumers: Dict[str, List[str]] = {}
        for node in self.graph_def.node:
            for name in node.input:
                if not name.startswith("^"):
                    self.consumers.setdefault(_source(name), []).append(node.name)
        captures = [t.name.split(":")[0] for t in function.graph.internal_captures]
        placeholder_of = {id(t): name for t, name in zip(function.captured_inputs, captures)}
        # Tensors the function captured by value (a Keras `Normalization`
        # layer's mean and variance, constants made outside the call) are
        # placeholders that its caller feeds; in the imported graph nobody
        # does ("You must feed a value for placeholder tensor"), so they
        # become the constants they are.
        for captured, name in zip(function.captured_inputs, captures):
            if (isinstance(captured, tf.Tensor) and captured.dtype != tf.resource
                    and name in self.nodes):
                try:
                    _make_constant(self.nodes[name], captured)
                except (tf.errors.OpError, ValueError, TypeError):
                    pass  # A variant, say: a cut that needs it fails there, and says so.
        # Read nodes of each variable (through Identity chains). A function
        # captures a variable's handle, or (a function restored under a
        # tf.distribute strategy) the distributed variable itself; a
        # mirrored variable's handle is that of its primary copy.
        self.reads: Dict[str, int] = {}
        for index, variable in enumerate(variables):
            handle = getattr(variable, "_primary", variable).handle
            placeholder = placeholder_of.get(id(variable)) or placeholder_of.get(id(handle))
            for reader in self._readers([placeholder] if placeholder else []):
                if self.nodes[reader].op == "ReadVariableOp":
                    self.reads[reader] = index
        self.depth = self._depth_from_input()

    def _depth_from_input(self):
        """Longest data path, in ops, from the images to each node."""
        depth = {self.input_name: 0}
        pending = {name: sum(1 for i in node.input
                             if not i.startswith("^") and _source(i) in self.nodes)
                   for name, node in self.nodes.items()}
        ready = [name for name, count in pending.items() if count == 0]
        while ready:
            name = ready.pop()
            for consumer in self.consumers.get(name, []):
                if name in depth:
                    depth[consumer] = max(depth.get(consumer, 0), depth[name] + 1)
                pending[consumer] -= 1
                if pending[consumer] == 0:
                    ready.append(consumer)
        return depth

    def trace_positions(self, variable_count) -> List[float]:
        """For each variable, the depth of the first image computation using it.

        A value is followed through computations that do not involve the
        images (a batch-norm scale times its variance, say) to the first
        one that does.

        Returns:
            One float per variable; `inf` where the graph does not read it.
        """
        positions = [float("inf")] * variable_count
        for read, index in self.reads.items():
            seen, frontier = set(), [read]
            while frontier:
                for consumer in self.consumers.get(frontier.pop(), []):
                    if consumer in seen:
                        continue
                    seen.add(consumer)
                    if consumer in self.depth and self.nodes[consumer].op not in _PASS_THROUGH:
                        positions[index] = min(positions[index], self.depth[consumer])
                    else:
                        frontier.append(consumer)
        return positions

    def _forward_closure(self, starts):
        seen, frontier = set(), list(starts)
        while frontier:
            name = frontier.pop()
            for consumer in self.consumers.get(name, []):
                if consumer not in seen:
                    seen.add(consumer)
                    frontier.append(consumer)
        return seen

    def whole(self, output_offsets: Optional[Dict[str, np.ndarray]] = None):
        """The uncut inlined graph as a differentiable function.

        Args:
            output_offsets: None, or {`KernelOp.name`: float [channels]}:
                each is subtracted from that op's output before anything
                reads it (`tflite.bias_correction`'s corrections).

        Returns:
            A callable (images float32 [N, H, W, 3], the backbone's
            variables in index order) -> features, whose gradients reach
            the variables like a split's do (`BackboneSplit`'s check
            compares the two).
        """
        graph_def = self._inference_graph_def
        variable_offsets, op_offsets = self._variable_offsets(output_offsets or {})
        if op_offsets:
            graph_def = tf.compat.v1.GraphDef()
            graph_def.CopyFrom(self._inference_graph_def)  # the shared one stays as it is
        output = _subtract_after(graph_def, op_offsets, self.output_tensor)
        run = _graph_function(graph_def, [self.input_name], [output],
                              _reads_in(graph_def, self.reads))
        if not variable_offsets:
            return lambda images, variables: run([images], variables)[0]

        def call(images, variables):
            values = list(variables)
            for index, offset in variable_offsets.items():
                values[index] = tf.convert_to_tensor(values[index]) + offset
            return run([images], values)[0]

        return call

    def _variable_offsets(self, output_offsets):
        """Moves each output offset into a variable where one op reads the
        output and a variable can absorb it: a batch norm's mean (the
        offset is added to it) or a bias (subtracted), read once in the
        inference graph, so that nothing else sees the change.
        Converters fold those into the op's own bias; an inserted
        subtraction, which they fold too, still adds its name to the fused
        tensors' names.

        Returns:
            ({variable index: float32 offset to add}, {op name: offset}
            left to `_subtract_after`).
        """
        read_count = {}
        for _, index in _reads_in(self._inference_graph_def, self.reads):
            read_count[index] = read_count.get(index, 0) + 1
        moved, left = {}, {}
        for name, offset in output_offsets.items():
            readers = self._readers([name])
            reader = self.nodes[readers.pop()] if len(readers) == 1 else None
            target = None
            if reader is not None and _source(self._canonical(reader.input[0])) == name:
                if reader.op == "FusedBatchNormV3" and not reader.attr["is_training"].b:
                    target = (_source(self._canonical(reader.input[3])), 1.0)
                elif reader.op == "BiasAdd":
                    target = (_source(self._canonical(reader.input[1])), -1.0)
            if (target is None or target[0] not in self.reads
                    or read_count.get(self.reads[target[0]]) != 1
                    or self._readers([target[0]]) != {reader.name}):
                left[name] = offset
                continue
            moved[self.reads[target[0]]] = target[1] * np.asarray(offset, np.float32)
        return moved, left

    @functools.cached_property
    def _inference_graph_def(self):
        """The nodes from the images to the features (`_subgraph`), built
        once for `whole`, `kernel_ops` and `_variable_offsets`; edited only
        as a copy."""
        return self._subgraph({}, [self.output_tensor])

    def kernel_ops(self) -> List["KernelOp"]:
        """The convolutions and matrix products of the inference graph whose
        kernel is one of the module's variables, in graph order.

        Ops with a layout or padding `KernelOp.apply` does not reproduce
        (NCHW, explicit padding, transposed products), and ops whose kernel
        is computed from a variable (BiT's weight standardisation), are left
        out.
        """
        needed = {node.name for node in self._inference_graph_def.node}
        found = []
        for node in self.graph_def.node:
            if node.op not in _KERNEL_OPS or node.name not in needed:
                continue
            kernel = _source(self._canonical(node.input[1]))
            if kernel not in self.reads:
                continue
            attr = node.attr
            if node.op == "MatMul":
                if attr["transpose_a"].b or attr["transpose_b"].b:
                    continue
                options = {}
            else:
                if (attr["data_format"].s not in (b"", b"NHWC")
                        or attr["padding"].s not in (b"SAME", b"VALID")):
                    continue
                options = {"strides": tuple(attr["strides"].list.i),
                           "padding": attr["padding"].s.decode(),
                           "dilations": tuple(attr["dilations"].list.i) or (1, 1, 1, 1)}
            found.append(KernelOp(node.name, node.op, self._canonical(node.input[0]),
                                  self.reads[kernel], options))
        return found

    def tensors(self, names: Sequence[str]):
        """A callable (images float32 [N, H, W, 3], variables) -> the values
        of the named tensors ("node:port") of the inference graph."""
        graph_def = self._subgraph({}, list(names))
        run = _graph_function(graph_def, [self.input_name], list(names),
                              _reads_in(graph_def, self.reads))
        return lambda images, variables: run([images], variables)

    def split(self, trainable_indices: Sequence[int]) -> "SplitGraph":
        """Cuts the graph where the given variables start to be used.

        Args:
            trainable_indices: Indices of the variables that will train.

        Returns:
            A `SplitGraph`.

        Raises:
            ValueError: if no variable of `trainable_indices` is read, or the
                image-dependent tensors entering the top cannot be found.
        """
        chosen = set(trainable_indices)
        top_reads = [read for read, index in self.reads.items() if index in chosen]
        if not top_reads:
            raise ValueError("None of the trainable variables is read by the "
                             "module's inference graph; it cannot be split.")
        top = self._forward_closure(top_reads)
        image_dependent = self._forward_closure([self.input_name]) | {self.input_name}
        boundary = []
        for name in sorted(top, key=lambda n: self.depth.get(n, 0)):
            for input_name in self.nodes[name].input:
                source = _source(input_name)
                tensor = self._canonical(input_name)
                if (not input_name.startswith("^") and source not in top
                        and source in image_dependent and tensor not in boundary):
                    boundary.append(tensor)
        if not boundary:
            raise ValueError("No image-dependent tensor enters the trainable blocks.")
        return SplitGraph(
            bottom=self._subgraph({}, boundary),
            top=self._subgraph({t: f"boundary_{i}" for i, t in enumerate(boundary)},
                               [self.output_tensor]),
            boundary=boundary,
            reads=dict(self.reads),
            input_name=self.input_name,
            output_tensor=self.output_tensor)

    def _canonical(self, input_name):
        """The tensor an input refers to, looking through Identity and
        IdentityN chains (inlining wraps one tensor in many Identity nodes)."""
        tensor = input_name if ":" in input_name else input_name + ":0"
        node = self.nodes[_source(tensor)]
        while node.op in _PASS_THROUGH:
            # Identity has one output; IdentityN's output k is its input k.
            tensor = self._canonical(node.input[_port(tensor)])
            node = self.nodes[_source(tensor)]
        return tensor

    def _readers(self, names):
        """The ops that take these tensors, looking through Identity chains."""
        readers, frontier = set(), list(names)
        while frontier:
            for consumer in self.consumers.get(frontier.pop(), []):
                if self.nodes[consumer].op in _PASS_THROUGH:
                    frontier.append(consumer)
                else:
                    readers.add(consumer)
        return readers

    def _subgraph(self, replaced, outputs):
        """The nodes `outputs` need, with `replaced` tensors as placeholders.

        Variable reads become placeholders too, fed with the variables'
        values when the graph runs, so gradients reach the variables.
        """
        graph_def = tf.compat.v1.GraphDef()
        graph_def.versions.CopyFrom(self.graph_def.versions)
        graph_def.library.CopyFrom(self.graph_def.library)
        feeds = dict(replaced)
        for tensor, placeholder in replaced.items():
            node = graph_def.node.add(name=placeholder, op="Placeholder")
            node.attr["dtype"].type = tf.float32.as_datatype_enum
            dtype = _output_dtype(self.nodes[_source(tensor)], _port(tensor))
            if dtype is not None and dtype.is_floating and dtype != tf.float32:
                # Boundaries cross as float32 (`_import_graph` casts the
                # bottom's outputs): a mixed-precision Keras model computes in
                # float16 inside, and the top takes float32 like its layer.
                cast = graph_def.node.add(name=f"{placeholder}/cast", op="Cast",
                                          input=[placeholder])
                cast.attr["SrcT"].type = tf.float32.as_datatype_enum
                cast.attr["DstT"].type = dtype.as_datatype_enum
                cast.attr["Truncate"].b = False
                feeds[tensor] = cast.name
        needed, frontier = set(), [_source(t) for t in outputs]
        while frontier:
            name = frontier.pop()
            if name in needed:
                continue
            needed.add(name)
            node = self.nodes[name]
            if name in self.reads or node.op == "Placeholder":
                continue
            for input_name in node.input:
                if input_name.startswith("^") or self._canonical(input_name) in replaced:
                    continue
                frontier.append(_source(input_name))
        handles = sorted(name for name in needed
                         if self.nodes[name].op == "Placeholder" and name != self.input_name
                         and self.nodes[name].attr["dtype"].type == tf.resource.as_datatype_enum)
        if handles:
            # A function that Grappler does not inline (one compiled with XLA,
            # as Keras 3 compiles grouped convolutions on the CPU) reads the
            # variable itself, so the read cannot be fed from outside.
            callers = sorted({self.nodes[consumer].op for consumer in self._readers(handles)})
            # No count in the message: the same reason at every cut logs once.
            if set(callers) <= {"PartitionedCall", "StatefulPartitionedCall"}:
                raise ValueError(
                    "some of its variables are read inside functions that are not inlined "
                    f"({', '.join(callers)}; XLA-compiled ones, such as Keras 3's grouped "
                    "convolutions, stay calls), so its graph cannot be cut there")
            raise ValueError(
                f"some of its variables are used by {', '.join(callers)} ops, not read, "
                "so its graph cannot be cut there")
        for node in self.graph_def.node:
            if node.name not in needed:
                continue
            copy = graph_def.node.add()
            if node.name in self.reads:
                copy.name, copy.op = node.name, "Placeholder"
                copy.attr["dtype"].CopyFrom(node.attr["dtype"])
                continue
            copy.CopyFrom(node)
            if "_gradient_op_type" in copy.attr:
                # A custom gradient (tf.nn.swish's, say) is registered as a
                # function of the restored module's own graph, which cannot
                # be called from the split's: differentiate the forward ops
                # instead. BackboneSplit's check compares the gradients.
                del copy.attr["_gradient_op_type"]
            del copy.input[:]
            for input_name in node.input:
                if input_name.startswith("^"):
                    # Ordering edges only matter inside the kept part.
                    if _source(input_name) in needed:
                        copy.input.append(input_name)
                else:
                    copy.input.append(feeds.get(self._canonical(input_name), input_name))
        _drop_colocation_with_absent_nodes(graph_def)
        return graph_def


def _output_dtype(node, port):
    """The dtype of a NodeDef's output `port`, from its op's registered
    definition, or None where that cannot tell (an unregistered op)."""
    # TensorFlow's registry of op definitions, which `import_graph_def` reads.
    from tensorflow.python.framework import op_def_registry

    op_def = op_def_registry.get(node.op)
    if op_def is None:
        return None
    types = []
    for arg in op_def.output_arg:
        if arg.type_list_attr:
            types.extend(node.attr[arg.type_list_attr].list.type)
            continue
        dtype = arg.type or node.attr[arg.type_attr].type
        types.extend([dtype] * (node.attr[arg.number_attr].i if arg.number_attr else 1))
    return tf.as_dtype(types[port]) if port < len(types) and types[port] else None


def _drop_colocation_with_absent_nodes(graph_def):
    """Drops colocation hints (`_class: loc:@node`) naming nodes a cut left out.

    Inlining a Keras model's call colocates its input placeholder with the
    call's inlined input node; a part without that node fails to import
    ("Node 'images' expects to be colocated with unknown node
    'Func/StatefulPartitionedCall/input/_0'": the top part when every block
    trains). The hints only place ops; the nodes they name are gone.
    """
    present = {node.name for node in graph_def.node}
    for node in graph_def.node:
        if "_class" not in node.attr:
            continue
        hints = node.attr["_class"].list.s
        kept = [hint for hint in hints
                if not hint.startswith(b"loc:@") or hint[len(b"loc:@"):].decode() in present]
        if len(kept) == len(hints):
            continue
        if kept:
            del hints[:]
            hints.extend(kept)
        else:
            del node.attr["_class"]


@dataclasses.dataclass(frozen=True)
class KernelOp:
    """An op of the inference graph that multiplies its input by a variable.

    Attributes:
        name: The op's node name.
        op: "Conv2D", "DepthwiseConv2dNative" or "MatMul".
        input_tensor: The tensor it multiplies ("node:port").
        kernel_index: Index of its kernel among the module's variables.
        options: strides, padding and dilations of a convolution.
    """

    name: str
    op: str
    input_tensor: str
    kernel_index: int
    options: dict

    @property
    def channel_axes(self):
        """The kernel's axes of its output channels: a Conv2D's [h, w, in,
        out] kernel has one per `out`, a depthwise [h, w, in, multiplier]
        one per (in, multiplier) pair, a MatMul's [in, out] one per `out`."""
        return {"Conv2D": (3,), "DepthwiseConv2dNative": (2, 3), "MatMul": (1,)}[self.op]

    def apply(self, inputs, kernel):
        """The op on `inputs` with another kernel (same shape): its output."""
        if self.op == "MatMul":
            return tf.matmul(inputs, kernel)
        strides, padding, dilations = (self.options[k] for k in
                                       ("strides", "padding", "dilations"))
        if self.op == "Conv2D":
            return tf.nn.conv2d(inputs, kernel, strides, padding, dilations=dilations)
        return tf.nn.depthwise_conv2d(inputs, kernel, strides, padding,
                                      dilations=dilations[1:3])


def _subtract_after(graph_def, offsets, output_tensor):
    """Rewires `graph_def` so that each op in `offsets` has its offset
    subtracted from its output (port 0) before any consumer reads it.

    Returns:
        The graph's output tensor name, moved if an offset op produced it.
    """
    if not offsets:
        return output_tensor
    renamed = {}
    for i, (name, offset) in enumerate(offsets.items()):
        # Not named after the op: TFLite names a fused op's tensors after
        # every op it fused, and the op's own long name here added 70 KB to
        # a 0.6 MB file.
        constant = graph_def.node.add(name=f"bias_correction/{i}/offset", op="Const")
        constant.attr["dtype"].type = tf.float32.as_datatype_enum
        # Added negated: converters fold an Add of a constant into the
        # preceding convolution's bias, and leave a Sub an op of its own.
        constant.attr["value"].tensor.CopyFrom(
            tf.make_tensor_proto(-np.asarray(offset, np.float32)))
        subtract = graph_def.node.add(name=f"bias_correction/{i}", op="AddV2")
        subtract.input.extend([name, constant.name])
        subtract.attr["T"].type = tf.float32.as_datatype_enum
        renamed[name] = subtract.name
    rewired = set(renamed.values())
    for node in graph_def.node:
        if node.name in rewired:
            continue
        for i, input_name in enumerate(node.input):
            if (not input_name.startswith("^") and _source(input_name) in renamed
                    and _port(input_name) == 0):
                node.input[i] = renamed[_source(input_name)]
    source = _source(output_tensor)
    if source in renamed and _port(output_tensor) == 0:
        return f"{renamed[source]}:0"
    return output_tensor


class SplitGraph:
    """A module graph cut in two at the tensors entering the trainable part.

    Attributes:
        bottom: GraphDef from the image placeholder to the `boundary` tensors.
        top: GraphDef from placeholders "boundary_<i>" to the output.
        boundary: Names of the tensors where the graph is cut.
        reads: Read-node name -> variable index (placeholders in both parts).
    """

    def __init__(self, bottom, top, boundary, reads, input_name, output_tensor):
        self.bottom, self.top = bottom, top
        self.boundary, self.reads = boundary, reads
        top_reads = _reads_in(top, reads)
        # The variables the top computes with: the trainable part's weights.
        self.top_variable_indices = sorted({index for _, index in top_reads})
        self._run_bottom = _graph_function(bottom, [input_name], boundary,
                                           _reads_in(bottom, reads))
        self._run_top = _graph_function(
            top, [f"boundary_{i}" for i in range(len(boundary))], [output_tensor], top_reads)

    def run_bottom(self, images, variables):
        """images float32 [N, H, W, 3] in [0, 1] -> list of boundary tensors."""
        return self._run_bottom([images], variables)

    def run_top(self, boundary_values, variables):
        """Boundary tensors -> features float32 [N, D], differentiable."""
        return self._run_top(list(boundary_values), variables)[0]


def _reads_in(graph_def, reads):
    """The (read placeholder, variable index) pairs a GraphDef holds, sorted."""
    present = {node.name for node in graph_def.node}
    return [(name, index) for name, index in sorted(reads.items()) if name in present]


def _graph_function(graph_def, feed_names, outputs, used_reads):
    """Makes a GraphDef callable on tensors and the variables it reads.

    The graph is imported inside its own tf.function: a gradient tape does
    not record ops created by `import_graph_def`, but it records the call of
    a function, whose gradient TensorFlow derives from the graph. The
    variables are read outside that function, so gradients reach them.

    Args:
        used_reads: `_reads_in(graph_def, ...)`: the read placeholders to feed.
    """

    # A partial, not a closure: TensorFlow's retracing warning counts the
    # traces of all functions sharing one Python code object, so a closure
    # made every split of a process (a second FineTuner, a reloaded
    # backbone) look like one function retraced ("5 out of the last 5 calls
    # ... triggered tf.function retracing").
    run = tf.function(
        functools.partial(_import_graph, graph_def, tuple(feed_names), tuple(outputs),
                          tuple(name for name, _ in used_reads)),
        reduce_retracing=True, autograph=False)

    def call(feeds, variables):
        return run(feeds, [tf.convert_to_tensor(variables[index]) for _, index in used_reads])

    return call


def _import_graph(graph_def, feed_names, outputs, read_names, feeds, read_values):
    input_map = {f"{name}:0": value for name, value in zip(feed_names, feeds)}
    input_map.update({f"{name}:0": value for name, value in zip(read_names, read_values)})
    tensors = tf.graph_util.import_graph_def(
        graph_def, input_map=input_map, return_elements=list(outputs))
    # A mixed-precision module's boundaries are float16 inside; they leave as
    # float32, which the top's placeholders take (`ModuleGraph._subgraph`).
    return [tf.cast(t, tf.float32) if t.dtype.is_floating and t.dtype != tf.float32 else t
            for t in tensors]


def _make_constant(node, value):
    """Turns a placeholder NodeDef into a Const holding `value` (an eager tensor)."""
    node.op = "Const"
    del node.input[:]
    node.attr.clear()
    node.attr["dtype"].type = value.dtype.as_datatype_enum
    node.attr["value"].tensor.CopyFrom(tf.make_tensor_proto(value.numpy()))


def _inlined_output(function, nodes):
    name = function.graph.outputs[0].name
    if name.split(":")[0] not in nodes:
        raise ValueError(f"The module's output {name} is not in its inlined graph.")
    return name
