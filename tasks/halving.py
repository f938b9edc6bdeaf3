"""Successive halving with epochs as the budget: every learning rate gets the smallest epoch
count of the grid; only the best 1/eta of them go on to the next epoch count, and so on.

Each rung trains grid points (lr, epochs) from scratch rather than resuming: a one-cycle
schedule is shaped by its total length, so a 4-epoch run is not a 2-epoch run continued. That
also makes every trial halving runs a trial of the full grid, so the two compare directly. The
rungs are synchronous (a rung starts when the previous one has finished); ASHA's asynchronous
promotions would keep workers busier on a cluster, but on one machine a rung's trials already
run concurrently.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from tasks.leaderboard import leaderboard
from tasks.train import Trial, TrialResult

DEFAULT_ETA = 3


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


def promoted(results: list[TrialResult], eta: int = DEFAULT_ETA) -> list[float]:
    """The learning rates that go on: the best ``max(1, n // eta)`` of a rung by validation
    accuracy (then loss), never a diverged one. Empty when every trial diverged."""
    if eta < 2:
        raise ValueError(f"eta is {eta}; successive halving needs eta >= 2.")
    usable = [r for r in leaderboard(results) if r.usable]
    keep = max(1, len(results) // eta)
    return [r.lr for r in usable[:keep]]


def successive_halving(
    lrs: list[float],
    epochs: list[int],
    eta: int,
    run: Callable[[list[Trial]], list[TrialResult]],
    log: Callable[[str], None] = print,
) -> list[TrialResult]:
    """Every trial that successive halving trains, rung by rung: ``run`` trains one rung's
    trials (at once, on whatever runner the caller chose) and returns their results in order."""
    results: list[TrialResult] = []
    alive = list(lrs)
    for n in rungs(epochs):
        rung = run(rung_trials(alive, n))
        results += rung
        alive = promoted(rung, eta)
        log(f"halving: after {n} epochs, going on with lrs {alive}")
        if not alive:
            break
    return results


def budget(lrs: list[float], epochs: list[int], results: list[TrialResult]) -> Budget:
    return Budget(
        grid_epochs=len(set(lrs)) * sum(set(epochs)),
        used_epochs=sum(r.epochs for r in results),
    )
