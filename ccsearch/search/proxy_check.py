"""Does the proxy rank candidates the same way from seed to seed?  ``ccsearch proxy-check``.

A NAS front is only as good as its proxy's ranking.  A proxy check is a small study of
its own (so it runs, resumes, scales and reads like a search): K candidates sampled at
random, the backbone without CondConv among them as the reference ``baseline``, each
trained with every seed (``repeats``).  From the per-seed top-1 it reports the
seed-to-seed Kendall tau and Spearman rho, the noise floor (median |delta top-1|
between seeds), the ``repeats`` a study needs to reach a target tau, and whether the
proxy is saturated (the baseline within 5 points of 100%).  With 4 seeds or more it also
measures what the recommendation predicts: the tau between means of disjoint groups of
seeds, which is how a study with that many ``repeats`` ranks.
"""

from __future__ import annotations

import itertools
import math
import statistics
from dataclasses import asdict, dataclass, replace

from scipy.stats import kendalltau, spearmanr

from ccsearch.errors import UserError
from ccsearch.search.record import Status, TrialRecord
from ccsearch.search.study import StudyConfig
from ccsearch.validate import at_least

TARGET_TAU = 0.7
SATURATED_WITHIN = 5.0  # points below 100% for the baseline: the proxy is at its ceiling
NO_BUDGET = 10**15  # a check over a bare space: every candidate is feasible


def check_config(base: StudyConfig, candidates: int, seeds: int, name: str | None = None,
                 bounded: bool = True) -> StudyConfig:
    """The study a proxy check runs: ``candidates`` in all (the baseline included),
    random sampler, no pruning, every candidate trained with ``seeds`` seeds.
    ``bounded``: keep the study's budget (False for a bare search space)."""
    at_least("--candidates", candidates, 3, why=" (a ranking needs three)")
    at_least("--seeds", seeds, 2, why=" (seed-to-seed agreement needs two)")
    space = base.space()
    return replace(
        base,
        name=name or f"proxy_check_{space.name}_{base.proxy_config().name}",
        budget=base.budget if bounded else NO_BUDGET,
        sampler="random",
        pruner="none",
        trials=candidates,
        repeats=seeds,
        references={"baseline": {"model": space.backbone, "width": max(space.width)}},
        count_references=True,
        description=f"proxy check: {candidates} candidates x {seeds} seeds",
    )


@dataclass(frozen=True)
class RankStability:
    candidates: int
    seeds: int
    kendall_tau: float  # mean over seed pairs
    spearman_rho: float
    noise_floor: float  # median |delta top-1| between two seeds of a candidate, points
    recommended_repeats: int | None  # seeds per candidate for TARGET_TAU (None: unreachable)
    # {n: mean Kendall tau between the means of two disjoint groups of n seeds, over every
    # such split}, for 2 <= n <= seeds // 2: how ``repeats: n`` ranks, measured
    means_tau: dict[int, float]
    baseline_top1: float | None
    saturated: bool
    rows: list[dict]  # per candidate: trial, reference, mean, std, per-seed top-1

    def to_dict(self) -> dict:
        return asdict(self)


def rank_stability(records: list[TrialRecord], target_tau: float = TARGET_TAU) -> RankStability:
    """The agreement between seeds over the candidates trained with every seed."""
    done = [r for r in records if r.status == Status.OK and len(r.seed_top1) >= 2]
    if len(done) < 3:
        raise UserError(f"a proxy check needs 3 candidates trained with every seed; "
                        f"{len(done)} are")
    seeds = min(len(r.seed_top1) for r in done)
    columns = [[r.seed_top1[s] for r in done] for s in range(seeds)]
    pairs = list(itertools.combinations(range(seeds), 2))
    tau = statistics.fmean(_finite(kendalltau(columns[a], columns[b])[0]) for a, b in pairs)
    rho = statistics.fmean(_finite(spearmanr(columns[a], columns[b])[0]) for a, b in pairs)
    noise = statistics.median(abs(r.seed_top1[a] - r.seed_top1[b]) for r in done for a, b in pairs)
    means_tau = {n: _tau_of_means(done, seeds, n) for n in range(2, seeds // 2 + 1)}
    baseline = next((r for r in done if r.reference == "baseline"), None)
    baseline_top1 = baseline.top1 if baseline is not None else None
    rows = [{"trial": r.number, "reference": r.reference, "top1": r.top1, "std": r.top1_std,
             "seed_top1": list(r.seed_top1), "madds": r.madds} for r in done]
    return RankStability(
        candidates=len(done), seeds=seeds, kendall_tau=tau, spearman_rho=rho, noise_floor=noise,
        recommended_repeats=repeats_for(tau, target_tau), means_tau=means_tau,
        baseline_top1=baseline_top1,
        saturated=baseline_top1 is not None and baseline_top1 > 100 - SATURATED_WITHIN, rows=rows,
    )


def _tau_of_means(done: list[TrialRecord], seeds: int, n: int) -> float:
    """Mean Kendall tau between the candidates' means over two disjoint groups of ``n`` of
    the ``seeds`` seeds, over every unordered pair of such groups."""
    taus = []
    for first in itertools.combinations(range(seeds), n):
        rest = [s for s in range(seeds) if s not in first]
        for second in itertools.combinations(rest, n):
            if second < first:
                continue  # the same split, counted once
            means = [[statistics.fmean(r.seed_top1[s] for s in group) for r in done]
                     for group in (first, second)]
            taus.append(_finite(kendalltau(*means)[0]))
    return statistics.fmean(taus)


def predicted_tau_of_means(tau: float, n: int) -> float:
    """The tau that means of ``n`` seeds should reach, from one seed's ``tau`` (Greiner's
    relation and Spearman-Brown, as ``repeats_for``)."""
    if tau <= 0:
        return tau
    r = math.sin(math.pi * tau / 2)
    return 2 / math.pi * math.asin(n * r / (1 + (n - 1) * r))


def repeats_for(tau: float, target: float = TARGET_TAU) -> int | None:
    """Seeds per candidate for means of that many seeds to agree with ``target`` tau.

    Greiner's relation turns tau into a correlation (r = sin(pi tau / 2)); the
    Spearman-Brown formula gives the correlation of means of n seeds, solved for n.
    None when the seeds do not agree at all (tau <= 0): no number of seeds helps."""
    if tau >= target:
        return 1
    if tau <= 0:
        return None
    r, wanted = math.sin(math.pi * tau / 2), math.sin(math.pi * target / 2)
    return math.ceil(wanted * (1 - r) / (r * (1 - wanted)))


def _finite(x: float) -> float:
    return 0.0 if x != x else float(x)  # constant columns: no ranking, no agreement
