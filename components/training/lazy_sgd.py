"""SGD whose cost for Partial FC centres follows the sample rate, with the dense update's result.

Dense SGD (momentum ``mu``, weight decay ``lam``, PyTorch's form: ``b <- mu*b + g + lam*w; w <- w - lr*b``)
touches every class centre and its momentum each step, although at sample rate ``rho`` only ``rho*C`` rows
have a gradient. For a row without gradient the step is linear in ``(w, b)``::

    [w]      [1 - lr*lam   -lr*mu] [w]
    [b]  <-  [   lam          mu ] [b]

with the same 2x2 matrix for every such row and dimension. So a row that skipped steps ``s+1..t`` is
brought up to date by one 2x2 product of those steps' matrices (kept per distinct ``s``; the learning
rates of recent steps are remembered), applied when the row is next read: by the forward pass that samples
it (``PartialFC.attach_row_reader`` -> ``read_rows``, whose up-to-date rows ``step`` then updates without reading
them again), and for every row in ``state_dict``, so that checkpoints hold exactly the dense state and
re-shard as before. Per step the work is proportional to the sampled rows; the only O(C) work left is one
``min`` over the per-row step counters.

arcface_torch updates every centre densely (its sampled gradient is scattered into a full-size tensor);
the result here is the same to float rounding, at the cost of ``rho*C`` rows (docs/training.md).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

MATERIALISE_BLOCK = 1 << 16  # rows brought up to date at a time by materialise (two 128 MB copies at d=512)


def _row_buffers(param: torch.Tensor, rows: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Uninitialised (values, momentum, scratch) for ``rows`` rows of ``param``."""
    return tuple(param.new_empty(rows, *param.shape[1:]) for _ in range(3))


class LazySGD(torch.optim.SGD):
    """``torch.optim.SGD`` (no Nesterov, no dampening) that applies row-sparse gradients lazily, as above.

    A param group with ``centres: True`` (the Partial FC head's, from ``build_optimizer``) is updated here
    also when its gradient is dense (rate 1), in place: torch's step would build a ``grad + weight_decay * w``
    copy of every centre, 1 GB per worker at 1M classes. Other parameters take torch's own step."""

    def __init__(self, params: Iterable[Any], lr: float, momentum: float = 0.0, weight_decay: float = 0.0) -> None:
        super().__init__(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
        self._lrs: dict[torch.Tensor, list[float]] = {}  # per lazy parameter: lr of steps since its oldest row
        # per lazy parameter: (rows, their up-to-date values, momentum) from read_rows, not yet written back
        self._read: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
        # per lazy parameter: the (values, momentum, scratch) buffers read_rows fills, kept from step to step:
        # on CPU a fresh 100 MB tensor costs more in page faults than the gather that fills it
        self._buffers: dict[torch.Tensor, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _lazy_state(self, param: torch.Tensor) -> dict[str, Any]:
        state = self.state[param]
        if "last_step" not in state:
            if state.get("momentum_buffer") is None:
                state["momentum_buffer"] = torch.zeros_like(param)
            state["last_step"] = torch.zeros(param.shape[0], dtype=torch.int64, device=param.device)
            state["step"] = torch.zeros((), dtype=torch.int64)
        self._lrs.setdefault(param, [])
        return state

    def _hyper(self, param: torch.Tensor) -> tuple[float, float, float]:
        group = next(g for g in self.param_groups if any(p is param for p in g["params"]))
        return group["lr"], group["momentum"], group["weight_decay"]

    def _decay(self, param: torch.Tensor, behind: torch.Tensor) -> torch.Tensor:
        """Per row, the 2x2 map ``A_step ... A_{s+1}`` (as 4 columns) for a row last updated at step ``s``."""
        state, lrs = self.state[param], self._lrs[param]
        step = int(state["step"])
        _, mu, lam = self._hyper(param)
        first = step - len(lrs)  # lrs[i] is the lr of step first + i + 1
        distinct, inverse = torch.unique(behind, return_inverse=True)
        wanted = set(distinct.tolist())
        products: dict[int, tuple[float, float, float, float]] = {step: (1.0, 0.0, 0.0, 1.0)}
        m = products[step]
        for k in range(step, int(distinct[0]), -1):  # suffix products, float64 scalars
            lr = lrs[k - first - 1]
            a = (1.0 - lr * lam, -lr * mu, lam, mu)
            m = (m[0] * a[0] + m[1] * a[2], m[0] * a[1] + m[1] * a[3],
                 m[2] * a[0] + m[3] * a[2], m[2] * a[1] + m[3] * a[3])
            if k - 1 in wanted:
                products[k - 1] = m
        coeffs = torch.tensor([products[s] for s in distinct.tolist()], dtype=torch.float64)
        return coeffs.to(device=param.device, dtype=param.dtype)[inverse]

    def _current(self, param: torch.Tensor, rows: torch.Tensor,
                 out: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        """Copies of ``rows`` of ``param`` and of their momentum, brought to the state after the last step
        (into ``out``'s values and momentum buffers when given, its third as scratch)."""
        state = self._lazy_state(param)
        w, b, scratch = out if out is not None else _row_buffers(param, len(rows))
        torch.index_select(param.detach(), 0, rows, out=w)
        torch.index_select(state["momentum_buffer"], 0, rows, out=b)
        behind = state["last_step"].index_select(0, rows)
        if bool((behind < int(state["step"])).any()):
            c = self._decay(param, behind)
            torch.mul(w, c[:, 2:3], out=scratch)  # (w, b) <- (c0 w + c1 b, c2 w + c3 b), in place
            w.mul_(c[:, 0:1]).addcmul_(b, c[:, 1:2])
            b.mul_(c[:, 3:4]).add_(scratch)
        return w, b

    def _write(self, param: torch.Tensor, rows: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> None:
        state = self.state[param]
        param.detach().index_put_((rows,), w)  # index_put_ rather than index_copy_: a third faster on CPU
        state["momentum_buffer"].index_put_((rows,), b)
        state["last_step"].index_fill_(0, rows, int(state["step"]))

    @torch.no_grad()
    def read_rows(self, param: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """The current values of ``rows`` (sorted, unique) for a forward pass; ``step`` updates these very
        tensors after the backward when the gradient is for the same rows, so the rows are read once per step.

        They live in buffers reused by the next call (a backward still pending on the previous call's rows
        then fails autograd's in-place check rather than use overwritten values)."""
        buffers = self._buffers.get(param)
        if buffers is None or buffers[0].shape[0] != len(rows):
            buffers = self._buffers[param] = _row_buffers(param, len(rows))
        w, b = self._current(param, rows, buffers)
        self._read[param] = (rows, w, b)
        return w

    @torch.no_grad()
    def materialise(self) -> None:
        """Every lazy row up to date: the exact dense state (for checkpoints and the final weights)."""
        for param in list(self._lrs):
            state = self.state[param]
            stale = torch.nonzero(state["last_step"] < state["step"]).squeeze(1)
            for rows in stale.split(MATERIALISE_BLOCK):  # bounded copies: not a second weight and momentum
                self._write(param, rows, *self._current(param, rows))
            self._lrs[param].clear()
            self._read.pop(param, None)

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:  # noqa: ANN401 - torch's signature
        own = {p: p.grad for g in self.param_groups for p in g["params"]
               if p.grad is not None and (p.grad.is_sparse or g.get("centres"))}
        for p in own:
            p.grad = None  # SGD's own step takes the other parameters
        loss = super().step(closure)
        for p, grad in own.items():
            p.grad = grad
            if grad.is_sparse:
                self._sparse_step(p, grad)
            else:
                self._dense_step(p, grad)
        return loss

    def _dense_step(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        """A centres group with a full gradient (rate 1): PyTorch's update, in place."""
        lr, mu, lam = self._hyper(param)
        state = self.state[param]
        lazy = param in self._lrs
        if lazy:
            self.materialise()
        if state.get("momentum_buffer") is None:
            state["momentum_buffer"] = torch.zeros_like(param)
        state["momentum_buffer"].mul_(mu).add_(grad).add_(param, alpha=lam)
        param.sub_(state["momentum_buffer"], alpha=lr)
        if lazy:
            state["step"] += 1
            state["last_step"].fill_(int(state["step"]))

    def _sparse_step(self, param: torch.Tensor, grad: torch.Tensor) -> None:
        if grad.dim() != 2 or grad.sparse_dim() != 1:
            raise ValueError("LazySGD takes row-sparse gradients of a 2-d parameter (an embedding-style lookup)")
        rows = grad._indices()[0]
        if len(rows) > 1 and not bool((rows[1:] > rows[:-1]).all()):  # one forward's rows are sorted and unique
            grad = grad.coalesce()  # the sum of several forwards' gradients (accumulation)
        rows, values = grad._indices()[0], grad._values()
        read = self._read.pop(param, None)
        if read is not None and read[0].shape == rows.shape and torch.equal(read[0], rows):
            w, b = read[1], read[2]
        else:  # rows read by several forwards (gradient accumulation) or not through read_rows
            w, b = self._current(param, rows)
        lr, mu, lam = self._hyper(param)
        b.mul_(mu).add_(values).add_(w, alpha=lam)
        w.sub_(b, alpha=lr)
        state = self.state[param]
        state["step"] += 1
        self._write(param, rows, w, b)
        lrs = self._lrs[param]
        lrs.append(float(lr))
        oldest = int(state["last_step"].min())
        del lrs[:max(0, len(lrs) - (int(state["step"]) - oldest))]  # forget the lrs no row still needs

    def state_dict(self) -> dict[str, Any]:
        self.materialise()
        return super().state_dict()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        for param, state in self.state.items():
            if "last_step" in state:
                state["last_step"] = state["last_step"].to(torch.int64)
                state["step"] = state["step"].to(torch.int64)
                self._lrs[param] = []  # checkpoints are materialised: every row is at the saved step
