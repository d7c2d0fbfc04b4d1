"""The least-squares solve shared by every weight refit after pruning.

:class:`LeastSquaresStats` accumulates the sufficient statistics of one
linear regression ``Y ~ X W + b`` row block by row block (``X^T X``,
``X^T Y``, column sums, ``sum ||Y||^2``), in float64, so the memory is one
``D x D`` Gram matrix (``D`` = input columns) plus ``D x O``, however many
points are fed. :meth:`LeastSquaresStats.solve` solves the ridge problem
(optionally with an intercept) by a Cholesky factorisation, falling back to
the minimum-norm pseudo-inverse solution when the matrix is singular.

Users: :func:`~mmrazor_ext.pruners.reconstruction.reconstruct` (one
statistics object per consumer and conv group, inputs from the already
refitted upstream network) and AMC's fm-reconstruction
(:meth:`~mmrazor_ext.search.amc_channels.ChannelChooser.reconstruct`, via
:func:`solve_consumer` on points sampled once on the dense model).
"""
from __future__ import annotations

import math

import torch

__all__ = ['LeastSquaresStats', 'check_ridge', 'solve_consumer']


def check_ridge(ridge, where: str = 'ridge') -> float:
    """``ridge`` as a finite float >= 0 (``ValueError`` naming ``where``)."""
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)) or \
            not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f'{where} must be a finite number >= 0, got '
                         f'{ridge!r}')
    return float(ridge)


class LeastSquaresStats:
    """Running statistics of one least-squares problem ``Y ~ X W + b``.

    Attributes:
        n (int): Rows (points) accumulated so far.
    """

    def __init__(self):
        self.n = 0
        self._g = self._c = self._sx = self._sy = self._syy = None

    def __bool__(self) -> bool:
        return self.n > 0

    @torch.no_grad()
    def update(self, x: torch.Tensor, y: torch.Tensor) -> None:
        """Add rows ``x`` (P, D) with targets ``y`` (P, O)."""
        if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
            raise ValueError(f'LeastSquaresStats.update: expected x (P, D) '
                             f'and y (P, O), got {tuple(x.shape)} and '
                             f'{tuple(y.shape)}')
        x, y = x.double(), y.double()
        if self._g is None:
            d, o = x.shape[1], y.shape[1]
            self._g, self._c = x.new_zeros(d, d), x.new_zeros(d, o)
            self._sx, self._sy = x.new_zeros(d), x.new_zeros(o)
            self._syy = x.new_zeros(())
        self._g += x.T @ x
        self._c += x.T @ y
        self._sx += x.sum(0)
        self._sy += y.sum(0)
        self._syy += (y * y).sum()
        self.n += x.shape[0]

    @property
    def target_sq_norm(self) -> float:
        """``sum ||y||^2`` over the accumulated rows."""
        return 0.0 if self._syy is None else float(self._syy)

    def _cpu(self):
        return tuple(t.cpu() for t in (self._g, self._c, self._sx, self._sy,
                                       self._syy))

    def sq_error(self, w: torch.Tensor, b: torch.Tensor | None = None
                 ) -> float:
        """``sum ||x w + b - y||^2`` over the accumulated rows.

        Args:
            w: (D, O) weights.
            b: (O,) intercept (None: zero).
        """
        if not self.n:
            return 0.0
        g, c, sx, sy, syy = self._cpu()
        w = w.detach().double().cpu()
        err = syy - 2 * (w * c).sum() + (w * (g @ w)).sum()
        if b is not None:
            b = b.detach().double().cpu()
            err = err - 2 * b @ sy + 2 * b @ (w.T @ sx) + self.n * b @ b
        return float(err)

    def solve(self, ridge: float = 1e-5, intercept: bool = True
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """Ridge least squares: ``(W (D, O), b (O,))`` float64 on the CPU.

        Args:
            ridge: Strength relative to the mean diagonal of the (centred,
                with ``intercept``) Gram matrix: ``lambda = ridge *
                trace(G) / D``; 0 is plain least squares (minimum-norm
                when singular).
            intercept: Fit ``b`` too (else ``b`` is zero).

        Raises:
            ValueError: Nothing accumulated, or a bad ``ridge``.
        """
        ridge = check_ridge(ridge)
        if not self.n:
            raise ValueError('LeastSquaresStats.solve: no rows accumulated')
        g, c, sx, sy, _ = self._cpu()
        if intercept:
            mx, my = sx / self.n, sy / self.n
            g = g - self.n * torch.outer(mx, mx)
            c = c - self.n * torch.outer(mx, my)
        d = g.shape[0]
        lam = ridge * max(float(torch.trace(g)) / d, 1e-12)
        a = g + lam * torch.eye(d, dtype=g.dtype)
        chol, info = torch.linalg.cholesky_ex(a)
        if int(info) == 0:
            w = torch.cholesky_solve(c, chol)
        else:  # singular (ridge=0 and dependent inputs): minimum norm
            w = torch.linalg.pinv(a, hermitian=True) @ c
        b = my - w.T @ mx if intercept else torch.zeros(
            c.shape[1], dtype=torch.float64)
        return w, b


def solve_consumer(x: torch.Tensor, w: torch.Tensor, keep: torch.Tensor,
                   ridge: float = 1e-5, chunk: int = 4096
                   ) -> tuple[torch.Tensor, dict[str, float]]:
    """Refit one consumer's weights on its kept input channels.

    The targets are the consumer's dense outputs at the sampled points,
    ``y_p = sum_{c,k} x_pck w_ock`` (no bias); the new weights of the kept
    channels minimise ``sum_p ||y_p - x_p[kept] w'||^2 + lambda ||w'||^2``
    (:meth:`LeastSquaresStats.solve` without intercept).

    Args:
        x: (P, C, K) input patches sampled on the dense model.
        w: (O, C, K) dense weights.
        keep: (C,) bool mask of kept input channels.
        ridge: See :meth:`LeastSquaresStats.solve`.
        chunk: Points accumulated at once.

    Returns:
        ``(new weights (O, C, K) float32 on the CPU, report)``: columns of
        removed channels keep their old values (masks hide them); ``w``
        itself when every channel is kept. The report has
        ``rel_error_before`` / ``rel_error_after`` (squared output error of
        the kept channels with the old / new weights, relative to the
        dense output's) and ``points``.
    """
    keep = keep.reshape(-1).bool().cpu()
    if x.ndim != 3 or w.ndim != 3 or x.shape[1:] != w.shape[1:] or \
            keep.numel() != w.shape[1]:
        raise ValueError(f'solve_consumer: expected x (P, C, K), w (O, C, K) '
                         f'and keep (C,), got {tuple(x.shape)}, '
                         f'{tuple(w.shape)}, {tuple(keep.shape)}')
    w = w.detach().float().cpu()
    if bool(keep.all()):
        return w, {'rel_error_before': 0.0, 'rel_error_after': 0.0,
                   'points': int(x.shape[0])}
    if not bool(keep.any()):
        raise ValueError('solve_consumer: no kept input channel to refit '
                         'from')
    stats = LeastSquaresStats()
    wk = w[:, keep].reshape(w.shape[0], -1)
    for s in range(0, x.shape[0], chunk):
        xs = x[s:s + chunk].float().cpu()
        y = torch.einsum('pck,ock->po', xs, w)
        stats.update(xs[:, keep].reshape(xs.shape[0], -1), y)
    sol, _ = stats.solve(ridge, intercept=False)
    total = max(stats.target_sq_norm, 1e-30)
    report = {'rel_error_before': stats.sq_error(wk.T) / total,
              'rel_error_after': stats.sq_error(sol) / total,
              'points': stats.n}
    new = w.clone()
    new[:, keep] = sol.T.reshape(w.shape[0], int(keep.sum()), -1).float()
    return new, report
