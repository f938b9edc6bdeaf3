"""Successive halving with epochs as the budget: every learning rate gets the smallest epoch
count of the grid; only the best 1/eta of them go on to the next epoch count, and so on.

Each rung trains grid points (lr, epochs) from scratch rather than resuming: a one-cycle
schedule is shaped by its total length, so a 4-epoch run is not a 2-epoch run continued. That
also makes every trial halving runs a trial of the full grid, so the two compare directly. The
rungs are synchronous (a rung starts when the previous one has finished); ASHA's asynchronous
promotions would keep workers busier on a cluster, but on one machine a rung's trials already
run concurrently.

A rung's scores are measured on a validation split of a few hundred images: two rates whose
accuracies differ by less than that split's sampling noise are not ranked, they are tied.
So a rung promotes its best 1/eta and, beside them, the next ones whose accuracy is within
noise of the last promoted one (:func:`noise`), as long as the epochs this may cost stay
within ``max_fraction`` of the full grid's (:func:`projected_epochs`). Cutting on noise
alone dropped the rate that won the grid at the first rung (1 epoch at 16 px), measured in
BENCHMARKS.md. And when the epochs left can train at least as many survivors for the grid's
longest count as the middle rungs would let through, the best of them go straight there
(:func:`direct_finalists`): a middle rung cut the grid's winner twice in BENCHMARKS.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

from tasks.leaderboard import leaderboard
from tasks.train import Trial, TrialResult

DEFAULT_ETA = 3
# Halving may spend up to this share of the full grid's epochs when it keeps tied trials.
DEFAULT_MAX_FRACTION = 0.4


@dataclass(frozen=True)
class Budget:
    grid_epochs: int  # what the full lrs x epochs grid would train
    used_epochs: int  # what was trained

    @property
    def saved_epochs(self) -> int:
        return self.grid_epochs - self.used_epochs

    @property
    def fraction(self) -> float:
        return self.used_epochs / self.grid_epochs if self.grid_epochs else 0.0

    def __str__(self) -> str:
        return (
            f"{self.used_epochs} of {self.grid_epochs} grid epochs "
            f"({self.fraction:.0%}; saved {self.saved_epochs})"
        )


def rungs(epochs: list[int]) -> list[int]:
    """The epoch counts of the grid, smallest first, each once."""
    if not epochs or min(epochs) < 1:
        raise ValueError(f"Successive halving needs positive epoch counts; got {epochs}.")
    return sorted(set(epochs))


def rung_trials(lrs: list[float], epochs: int) -> list[Trial]:
    return [Trial(lr=lr, epochs=epochs) for lr in lrs]


def noise(accuracy: float, n_valid: int) -> float:
    """The standard error of the difference between two models' accuracies around
    ``accuracy`` on ``n_valid`` (>= 1) validation images (as if their errors were
    independent): differences smaller than this are ties."""
    p = min(max(accuracy, 0.0), 1.0)
    return math.sqrt(2 * p * (1 - p) / n_valid)


def projected_epochs(alive: int, epochs: list[int], eta: int) -> int:
    """Epochs that ``alive`` trials cost over the rungs ``epochs`` if every later rung keeps
    only its best 1/eta (the fewest halving can go on with)."""
    total = 0
    for n in epochs:
        total += alive * n
        alive = max(1, alive // eta)
    return total


def promoted(
    results: list[TrialResult],
    eta: int = DEFAULT_ETA,
    n_valid: int = 0,
    spare_epochs: int = 0,
    later: list[int] | None = None,
) -> list[float]:
    """The learning rates that go on: the best ``max(1, n // eta)`` of a rung by validation
    accuracy (then loss), never a diverged one, and after them those tied with the last one
    (within :func:`noise` on ``n_valid`` images) while their projected cost over the
    ``later`` rungs fits in ``spare_epochs``. Empty when every trial diverged."""
    if eta < 2:
        raise ValueError(f"eta is {eta}; successive halving needs eta >= 2.")
    usable = [r for r in leaderboard(results) if r.usable]
    keep = min(max(1, len(results) // eta), len(usable))
    later = later or []
    while (
        n_valid > 0
        and 0 < keep < len(usable)
        and usable[keep - 1].val_accuracy - usable[keep].val_accuracy
        <= noise(usable[keep - 1].val_accuracy, n_valid)
        and projected_epochs(keep + 1, later, eta) <= spare_epochs
    ):
        keep += 1
    return [r.lr for r in usable[:keep]]


def successive_halving(
    lrs: list[float],
    epochs: list[int],
    eta: int,
    run: Callable[[list[Trial]], list[TrialResult]],
    n_valid: int = 0,
    max_fraction: float = DEFAULT_MAX_FRACTION,
    log: Callable[[str], None] = print,
) -> list[TrialResult]:
    """Every trial that successive halving trains, rung by rung: ``run`` trains one rung's
    trials (at once, on whatever runner the caller chose) and returns their results in order.
    ``n_valid`` (the validation images) sizes the noise within which trials count as tied;
    ``max_fraction`` of the full grid's epochs bounds what keeping them may cost."""
    results: list[TrialResult] = []
    alive = list(dict.fromkeys(lrs))
    schedule = rungs(epochs)
    allowed = math.floor(max_fraction * len(alive) * sum(schedule))
    i = 0
    while i < len(schedule):
        n = schedule[i]
        rung = run(rung_trials(alive, n))
        results += rung
        spare = allowed - sum(r.epochs for r in results)
        alive = promoted(rung, eta, n_valid, spare, schedule[i + 1 :])
        log(f"halving: after {n} epochs, going on with lrs {alive}")
        if not alive:
            break
        i += 1
        direct = direct_finalists(len(alive), schedule[i:], spare, eta)
        if direct:
            alive = alive[:direct]
            log(
                f"halving: the budget trains {alive} for {schedule[-1]} epochs: "
                f"skipping rungs {schedule[i:-1]}"
            )
            i = len(schedule) - 1
    return results


def direct_finalists(alive: int, later: list[int], spare_epochs: int, eta: int) -> int:
    """How many of the ``alive`` rates (best first) to train straight at the last of the
    ``later`` rungs, skipping the middle ones; 0 to run the next rung instead.

    Middle rungs exist to choose, on a shorter and noisier score, which survivors the budget
    trains to the end. When ``spare_epochs`` can train at least as many of them to the end as
    the middle rungs would let through (``alive // eta`` per rung, at least one), they would
    only cut on that noisier score: at 2 epochs the rate that won the grid at 4 ranked second
    and was dropped, twice (BENCHMARKS.md, issue 20), while the first rung's best two held it
    each time."""
    if len(later) < 2:
        return 0
    fit = min(alive, spare_epochs // later[-1])
    through = alive
    for _ in later[:-1]:
        through = max(1, through // eta)
    return fit if fit >= through else 0


def budget(lrs: list[float], epochs: list[int], results: list[TrialResult]) -> Budget:
    return Budget(
        grid_epochs=len(set(lrs)) * sum(set(epochs)),
        used_epochs=sum(r.epochs for r in results),
    )
