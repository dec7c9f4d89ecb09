"""Solvers for dh/dt = F(h) over an interval of length T, on tensors of any shape.

Fixed step size s = T / n (n steps):

* ``euler`` (order 1, 1 evaluation of F per step):  h <- h + s F(h)
* ``heun``  (order 2, 2 evaluations): k1 = F(h), k2 = F(h + s k1);  h <- h + s/2 (k1 + k2)
* ``rk4``   (order 4, 4 evaluations): the classical Runge-Kutta scheme
  k1 = F(h), k2 = F(h + s/2 k1), k3 = F(h + s/2 k2), k4 = F(h + s k3);  h <- h + s/6 (k1 + 2 k2 + 2 k3 + k4)

The global error of an order-p method falls as s^p: halving s divides it by about 2^p.

Adaptive (``adaptive``): Bogacki-Shampine 3(2) with first-same-as-last. Each step forms the third-order
solution y3 = h + s (2/9 k1 + 1/3 k2 + 4/9 k3) and, with k4 = F(y3), the embedded second-order one
y2 = h + s (7/24 k1 + 1/4 k2 + 1/3 k3 + 1/8 k4). The step is accepted when

    e = rms( (y3 - y2) / (atol + rtol * max(|h|, |y3|)) ) <= 1

and the next step size is s * clamp(0.9 e^(-1/3), 0.2, 5). The step size is shared by the whole batch
(one error norm over every element), so its compute depends on the data: use it at inference only.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from plmkit.errors import ConfigError

Field = Callable[[torch.Tensor], torch.Tensor]
FIXED_SOLVERS = ("euler", "heun", "rk4")
SOLVERS = FIXED_SOLVERS + ("adaptive",)
EVALS_PER_STEP = {"euler": 1, "heun": 2, "rk4": 4}


def euler_step(f: Field, h: torch.Tensor, s: float) -> torch.Tensor:
    return h + s * f(h)


def heun_step(f: Field, h: torch.Tensor, s: float) -> torch.Tensor:
    k1 = f(h)
    k2 = f(h + s * k1)
    return h + (s / 2) * (k1 + k2)


def rk4_step(f: Field, h: torch.Tensor, s: float) -> torch.Tensor:
    k1 = f(h)
    k2 = f(h + (s / 2) * k1)
    k3 = f(h + (s / 2) * k2)
    k4 = f(h + s * k3)
    return h + (s / 6) * (k1 + 2 * k2 + 2 * k3 + k4)


STEPPERS = {"euler": euler_step, "heun": heun_step, "rk4": rk4_step}


def check_solver(name: str) -> str:
    if name not in SOLVERS:
        raise ConfigError(f"solver must be one of {SOLVERS}, got {name!r}")
    return name


def solve_fixed(f: Field, h: torch.Tensor, length: float, steps: int, method: str = "euler") -> torch.Tensor:
    """h(T) after ``steps`` equal steps of ``method`` over an interval of length ``length``."""
    if method not in STEPPERS:
        raise ConfigError(f"fixed-step solver must be one of {FIXED_SOLVERS}, got {method!r}")
    if steps < 1:
        raise ConfigError(f"the number of steps must be >= 1, got {steps}")
    step, s = STEPPERS[method], length / steps
    for _ in range(steps):
        h = step(f, h, s)
    return h


def solve_adaptive(f: Field, h: torch.Tensor, length: float, rtol: float = 1e-3, atol: float = 1e-4,
                   first_step: float | None = None, max_evals: int = 1000) -> tuple[torch.Tensor, int]:
    """(h(T), evaluations of F) with Bogacki-Shampine 3(2) step-size control."""
    if rtol <= 0 or atol <= 0:
        raise ConfigError(f"adaptive solver tolerances must be > 0, got rtol={rtol}, atol={atol}")
    t, s = 0.0, min(first_step or length, length)
    k1, evals = f(h), 1
    while t < length - 1e-12 * length:
        s = min(s, length - t)
        k2 = f(h + (s / 2) * k1)
        k3 = f(h + (3 * s / 4) * k2)
        y3 = h + s * ((2 / 9) * k1 + (1 / 3) * k2 + (4 / 9) * k3)
        k4 = f(y3)
        evals += 3
        y2 = h + s * ((7 / 24) * k1 + (1 / 4) * k2 + (1 / 3) * k3 + (1 / 8) * k4)
        scale = atol + rtol * torch.maximum(h.abs(), y3.abs())
        error = float(((y3 - y2) / scale).detach().float().square().mean().sqrt())
        if error <= 1.0:
            t, h, k1 = t + s, y3, k4
        s *= min(5.0, max(0.2, 0.9 * (error if error > 0 else 1e-10) ** (-1 / 3)))
        if evals > max_evals:
            raise ConfigError(f"the adaptive solver needed more than {max_evals} evaluations of F; "
                              "loosen --rtol/--atol or use a fixed-step solver")
    return h, evals
