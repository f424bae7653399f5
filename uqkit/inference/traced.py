"""Value and gradient of a batched log density: autograd, or a graph traced once per input shape.

`value_and_grad` is what every HMC/NUTS leapfrog step calls; `TracedLogDensity` (used by
`uqkit.sample` unless ``trace_gradient=False``) replaces autograd's per-node bookkeeping with one
recorded aten graph that reproduces autograd's result bit for bit.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

LogDensity = Callable[[Tensor], Tensor]


def value_and_grad(log_density: LogDensity, position: Tensor) -> tuple[Tensor, Tensor]:
    """Log density ``[C]`` and its gradient ``[C, D]`` at ``position [C, D]``, all chains in one call.

    Through the traced graph of a `TracedLogDensity`, else autograd. The backward pass goes straight
    to the autograd engine (what `torch.autograd.grad` does after its argument checks, which cost
    more than a small model's whole backward); the result is identical.
    """
    if isinstance(log_density, TracedLogDensity):
        return log_density.value_and_grad(position)
    return _autograd_value_and_grad(log_density, position)


def _autograd_value_and_grad(log_density: LogDensity, position: Tensor) -> tuple[Tensor, Tensor]:
    with torch.enable_grad():
        z = position.detach().requires_grad_(True)
        value = log_density(z)
        ones = torch.ones_like(value)
        if _run_backward is None:
            (grad,) = torch.autograd.grad(value, z, ones)
        else:
            (grad,) = _run_backward((value,), (ones,), False, False, (z,), False, False)
    return value.detach(), grad


_run_backward = getattr(getattr(torch.autograd.Variable, "_execution_engine", None), "run_backward", None)

ValueAndGrad = Callable[[Tensor], tuple[Tensor, Tensor]]


class TracedLogDensity:
    """A log density whose value-and-gradient is traced once per input shape and then run as one
    graph, without the autograd engine's per-node cost (2-2.5x cheaper on small models).

    The forward and backward are recorded together as aten operations by ``make_fx`` on fake tensors
    (so a log density whose control flow depends on its input's values, or that reads a tensor back
    to Python, fails to trace instead of being baked in), then run by TorchScript's interpreter with
    graph optimisation off: every operation is the one autograd runs, in the same order, so values
    and gradients are bit-identical, which is checked on the first call (a log density with hidden
    randomness or state fails that check). Where tracing fails or the check disagrees, autograd is
    used for that shape. The log density's Python code runs only while tracing (side effects such as
    call counters see one call). The first trace in a process imports torch's symbolic-shape
    machinery (sympy; about 1 CPU second).

    Args:
        log_density: maps ``[C, D]`` to ``[C]``, written with differentiable torch operations; calling
            this object evaluates it.
    """

    def __init__(self, log_density: LogDensity) -> None:
        self.log_density = log_density
        self._graphs: dict[tuple, ValueAndGrad | None] = {}

    def __call__(self, position: Tensor) -> Tensor:
        return self.log_density(position)

    def value_and_grad(self, position: Tensor) -> tuple[Tensor, Tensor]:
        """Log density ``[C]`` and gradient ``[C, D]`` at ``position [C, D]``."""
        graph = self.graph_for(position)
        if graph is None:
            return _autograd_value_and_grad(self.log_density, position)
        with torch.jit.optimized_execution(False):
            return graph(position)

    def graph_for(self, position: Tensor) -> ValueAndGrad | None:
        """The traced value-and-gradient for inputs of ``position``'s shape, dtype and device (traced
        at ``position`` the first time), or None where autograd runs instead. Call it under
        ``torch.jit.optimized_execution(False)``, as `value_and_grad` does: the graph executor's
        optimisations would change the floating-point results."""
        key = (position.shape, position.dtype, position.device)
        if key not in self._graphs:
            expected = _autograd_value_and_grad(self.log_density, position)
            graph = _trace(self.log_density, position, expected)
            self._graphs[key] = None if graph is None else graph.forward
        return self._graphs[key]

    @property
    def traced(self) -> bool:
        """Whether any input shape runs through a traced graph."""
        return any(graph is not None for graph in self._graphs.values())


def _trace(log_density: LogDensity, position: Tensor, expected: tuple[Tensor, Tensor]) -> ValueAndGrad | None:
    """The traced graph of `_autograd_value_and_grad` at ``position``'s shape, or None if it cannot be
    traced or does not reproduce ``expected`` (value, gradient) bit for bit."""
    import warnings

    from torch.fx.experimental.proxy_tensor import make_fx

    def joint(z: Tensor) -> tuple[Tensor, Tensor]:
        with torch.enable_grad():
            z = z.detach().requires_grad_(True)
            value = log_density(z)
            (grad,) = torch.autograd.grad(value, z, torch.ones_like(value))
        return value.detach(), grad

    try:
        with warnings.catch_warnings():  # torch.jit is deprecated but is the one C++ graph runner on CPU
            warnings.simplefilter("ignore")
            graph_module = make_fx(joint, tracing_mode="fake", _allow_non_fake_inputs=True)(position)
            _fold_constants(graph_module)
            graph = torch.jit.trace(graph_module, (position,), check_trace=False)
            with torch.jit.optimized_execution(False):
                got = graph(position)
    except Exception:  # noqa: BLE001 - whatever does not trace runs through autograd instead
        return None
    same = all(a.shape == b.shape and bool(torch.isclose(a, b, 0, 0, equal_nan=True).all())
               for a, b in zip(got, expected))
    return graph if same else None


def _fold_constants(graph_module: torch.fx.GraphModule) -> None:
    """Clean up a traced value-and-gradient graph in place without changing a bit of its results:
    ``detach`` and ``x ** 1`` are dropped, and every operation that depends on no input value (the
    backward pass's seed ``ones_like(value)`` and the constant factors built from it) is computed once
    and stored. Each dropped operation saves the interpreter about a microsecond per call."""
    aten = torch.ops.aten
    graph = graph_module.graph
    constant: dict[torch.fx.Node, Tensor] = {}
    for node in list(graph.nodes):
        if node.op == "get_attr":
            constant[node] = getattr(graph_module, node.target)
        if node.op != "call_function":
            continue
        if node.target is aten.detach.default or (node.target is aten.pow.Tensor_Scalar and node.args[1] == 1):
            node.replace_all_uses_with(node.args[0])
            graph.erase_node(node)
            continue
        if torch.Tag.nondeterministic_seeded in getattr(node.target, "tags", ()):
            continue
        inputs = node.all_input_nodes
        if node.target in (aten.ones_like.default, aten.zeros_like.default):  # depends on the shape only
            fake = node.meta["val"]
            value = (torch.ones if node.target is aten.ones_like.default else torch.zeros)(
                fake.shape, dtype=fake.dtype, device=fake.device)
        elif all(n in constant for n in inputs):
            args, kwargs = torch.fx.node.map_arg((node.args, node.kwargs), constant.__getitem__)
            value = node.target(*args, **kwargs)
            if not isinstance(value, Tensor):
                continue
        else:
            continue
        name = f"_folded_{node.name}"
        setattr(graph_module, name, value)
        with graph.inserting_before(node):
            folded = graph.get_attr(name)
        folded.meta = node.meta
        node.replace_all_uses_with(folded)
        graph.erase_node(node)
        constant[folded] = value
    graph.eliminate_dead_code()
    graph_module.recompile()
