"""DEAP on the problems and budgets of frugal-evolve's `quality` example, as its peer: the
same populations, generations, seeds, operators and parameters, where DEAP has them.

    python bench/peers/deap_evolve.py [SEEDS]     # seeds 1..SEEDS, 10 by default

    cargo run --release -p frugal-evolve --example quality   # the frugal-evolve side

One JSON object in the example's schema: per problem the median, best and worst over the
seeds of the final best objective value (hypervolume with reference (1, 1) for ZDT1, where
larger is better), every seed's figure, and the evaluations used.

The algorithms, with DEAP's own operators (tools.cxSimulatedBinaryBounded crosses each gene
with probability 0.5, tools.mutPolynomialBounded is Deb's bounded mutation):

- ga: eaSimple's generation (tournament of 3, varAnd with crossover 0.9 and every child
  through mutation, 1/n per gene, eta 15 and 20) breeding μ − 1 children, plus the best
  parent carried over: frugal-evolve's GA with one elite.
- mu_plus_lambda: the same breeding of λ = μ children, then selBest of parents and
  children together.
- nsga2: DEAP's NSGA-II example (selTournamentDCD, selNSGA2) for 100 generations after the
  initial population, with frugal-evolve's NSGA-II defaults where DEAP can express them
  (zdt1_nsga2: crossover always, eta 20 for both operators, 2/n per gene; the per-gene
  crossover probability stays DEAP's 0.5, not 0.6) and with the example's own settings
  (zdt1_nsga2_customary: crossover 0.9, 1/n per gene), which frugal-evolve's example also
  runs under that name.

DEAP has no steady-state NSGA-II, so frugal-evolve's zdt1_nsga2_steady_state has no peer.
"""

import json
import math
import random
import statistics
import sys
import time

import deap
from deap import base, creator, tools

SEEDS = list(range(1, 1 + (int(sys.argv[1]) if len(sys.argv) > 1 else 10)))
POPULATION = 100
GENERATIONS = 100

creator.create("Min1", base.Fitness, weights=(-1.0,))
creator.create("Min2", base.Fitness, weights=(-1.0, -1.0))
creator.create("Ind1", list, fitness=creator.Min1)
creator.create("Ind2", list, fitness=creator.Min2)


def sphere(x):
    return (sum(v * v for v in x),)


def rastrigin(x):
    return (10 * len(x) + sum(v * v - 10 * math.cos(2 * math.pi * v) for v in x),)


def zdt1(x):
    g = 1 + 9 * sum(x[1:]) / (len(x) - 1)
    return x[0], g * (1 - math.sqrt(x[0] / g))


def hypervolume_2d(points, reference=(1.0, 1.0)):
    inside = sorted(p for p in points if p[0] < reference[0] and p[1] < reference[1])
    area, ceiling = 0.0, reference[1]
    for f1, f2 in inside:
        if f2 < ceiling:
            area += (reference[0] - f1) * (ceiling - f2)
            ceiling = f2
    return area


def toolbox_for(n, low, high, individual, evaluate, eta_c, eta_m, indpb, select, **select_args):
    tb = base.Toolbox()
    tb.register("attr", random.uniform, low, high)
    tb.register("individual", tools.initRepeat, individual, tb.attr, n)
    tb.register("population", tools.initRepeat, list, tb.individual)
    tb.register("evaluate", evaluate)
    tb.register("mate", tools.cxSimulatedBinaryBounded, low=low, up=high, eta=eta_c)
    tb.register("mutate", tools.mutPolynomialBounded, low=low, up=high, eta=eta_m, indpb=indpb)
    tb.register("select", select, **select_args)
    return tb


def evaluate_invalid(tb, individuals):
    invalid = [ind for ind in individuals if not ind.fitness.valid]
    for ind in invalid:
        ind.fitness.values = tb.evaluate(ind)
    return len(invalid)


def breed(tb, parents, count, cxpb):
    """varAnd with every child mutated: pairs crossed with probability cxpb."""
    children = [tb.clone(ind) for ind in tb.select(parents, count)]
    for i in range(1, len(children), 2):
        if random.random() < cxpb:
            tb.mate(children[i - 1], children[i])
    for child in children:
        tb.mutate(child)
        del child.fitness.values
    return children


def run_single(method, evaluate, low, high, seed):
    random.seed(seed)
    n = 10
    tb = toolbox_for(n, low, high, creator.Ind1, evaluate, 15.0, 20.0, 1.0 / n,
                     tools.selTournament, tournsize=3)
    pop = tb.population(n=POPULATION)
    evaluations = evaluate_invalid(tb, pop)
    hof = tools.HallOfFame(1)
    hof.update(pop)
    for _ in range(GENERATIONS):
        if method == "ga":
            children = breed(tb, pop, POPULATION - 1, 0.9)
            evaluations += evaluate_invalid(tb, children)
            pop = tools.selBest(pop, 1) + children
        else:
            children = breed(tb, pop, POPULATION, 0.9)
            evaluations += evaluate_invalid(tb, children)
            pop = tools.selBest(pop + children, POPULATION)
        hof.update(pop)
    return hof[0].fitness.values[0], evaluations


def run_nsga2(seed, cxpb, eta_c, eta_m, indpb):
    random.seed(seed)
    n = 30
    tb = toolbox_for(n, 0.0, 1.0, creator.Ind2, zdt1, eta_c, eta_m, indpb, tools.selNSGA2)
    pop = tb.population(n=POPULATION)
    evaluations = evaluate_invalid(tb, pop)
    pop = tb.select(pop, len(pop))  # assigns the crowding distances selTournamentDCD reads
    for _ in range(GENERATIONS):
        offspring = [tb.clone(ind) for ind in tools.selTournamentDCD(pop, len(pop))]
        for a, b in zip(offspring[::2], offspring[1::2]):
            if random.random() <= cxpb:
                tb.mate(a, b)
            tb.mutate(a)
            tb.mutate(b)
            del a.fitness.values, b.fitness.values
        evaluations += evaluate_invalid(tb, offspring)
        pop = tb.select(pop + offspring, POPULATION)
    return hypervolume_2d([ind.fitness.values for ind in pop]), evaluations


def summary(method, metric, runner, mode="generational"):
    started = time.perf_counter()
    runs = [runner(seed) for seed in SEEDS]
    seconds = (time.perf_counter() - started) / len(SEEDS)
    scores = [r[0] for r in runs]
    ordered = sorted(scores, reverse=(metric == "hypervolume"))
    return {
        "method": method,
        "mode": mode,
        "population": POPULATION,
        "generations": GENERATIONS,
        "evaluations": runs[0][1],
        "metric": metric,
        "median": statistics.median(scores),
        "mean": statistics.fmean(scores),
        "best": ordered[0],
        "worst": ordered[-1],
        "per_seed": scores,
        "seconds_per_run": seconds,
    }


def main():
    problems = {
        "sphere10_ga": summary(
            "ga", "best_fitness", lambda s: run_single("ga", sphere, -5.12, 5.12, s)),
        "rastrigin10_ga": summary(
            "ga", "best_fitness", lambda s: run_single("ga", rastrigin, -5.12, 5.12, s)),
        "rastrigin10_mu_plus_lambda": summary(
            "mu_plus_lambda", "best_fitness",
            lambda s: run_single("mu_plus_lambda", rastrigin, -5.12, 5.12, s)),
        "zdt1_nsga2": summary(
            "nsga2", "hypervolume", lambda s: run_nsga2(s, 1.0, 20.0, 20.0, 2.0 / 30)),
        "zdt1_nsga2_customary": summary(
            "nsga2", "hypervolume", lambda s: run_nsga2(s, 0.9, 20.0, 20.0, 1.0 / 30)),
    }
    print(json.dumps({"implementation": f"deap {deap.__version__}", "seeds": SEEDS,
                      "problems": problems}, indent=2, sort_keys=True))


if __name__ == "__main__":
    main()
