"""Graphs of layers: the functional form of ``Model``.

    from fastbp import Add, Dense, Input, Model
    x = Input(784)
    h = Dense(256, "tanh")(x)
    r = Dense(256, "tanh")(Dense(256, "tanh")(h))
    out = Dense(10)(Add()(h, r))            # a skip over two layers
    model = Model(out)

A node is a layer spec applied to earlier nodes.  ``flatten`` turns the nodes that the output
depends on into the plan's form: specs in a topological order (every layer after its inputs, the
output last) and, per layer, the indices of its inputs (-1: the model's input).
"""


class Input:
    """The model's input: ``features`` columns."""

    def __init__(self, features):
        if isinstance(features, bool) or not isinstance(features, int) or features < 1:
            raise ValueError(f"Input.features: expected a positive int, got {features!r}")
        self.features = features

    def __repr__(self):
        return f"Input({self.features})"


class Node:
    """The output of ``spec`` applied to ``inputs`` (nodes or the Input)."""

    def __init__(self, spec, inputs):
        name = type(spec).__name__
        if len(inputs) != spec.inputs:
            raise ValueError(f"{name}: expected {spec.inputs} input{'s' if spec.inputs > 1 else ''}, "
                             f"got {len(inputs)}")
        for k, n in enumerate(inputs):
            if not isinstance(n, (Node, Input)):
                raise TypeError(f"{name}: input {k}: expected a node (a layer's output) or fastbp.Input, "
                                f"got {type(n).__name__}")
        self.spec, self.inputs = spec, tuple(inputs)

    def __repr__(self):
        return f"<node {self.spec!r}>"


def flatten(output):
    """(specs, wiring, input features) of the graph ending at ``output``; ``wiring[i]`` is the
    tuple of input indices of layer i (-1: the model's input)."""
    order, index, inputs = [], {}, set()

    def visit(node, path):
        if isinstance(node, Input):
            inputs.add(node)
            return
        if id(node) in index:
            return
        if id(node) in path:
            raise ValueError("graph: a layer depends on its own output (a cycle)")
        path.add(id(node))
        for n in node.inputs:
            visit(n, path)
        path.discard(id(node))
        index[id(node)] = len(order)
        order.append(node)
    visit(output, set())
    if len(inputs) != 1:
        raise ValueError(f"graph: expected exactly one fastbp.Input, found {len(inputs)}")
    wiring = [tuple(-1 if isinstance(n, Input) else index[id(n)] for n in node.inputs) for node in order]
    return [node.spec for node in order], wiring, next(iter(inputs)).features
