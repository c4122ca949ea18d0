//! Non-dominated sorting and crowding distance (Deb et al., NSGA-II, 2002), under Deb's
//! constrained domination ([`Fitness::dominates`]).

use crate::Fitness;
use crate::fitness::pareto_dominates;

/// The fronts of `fits`, best first, each a list of indices into `fits` in increasing order.
///
/// Front 0 holds the results nothing dominates, front 1 those dominated only by front 0, and
/// so on. Under constrained domination the feasible results come first, in their Pareto
/// fronts; the infeasible follow, one front per violation value in increasing order, with
/// failed evaluations last. Two objectives take O(N log N) time, more take O(M·N²).
pub fn fronts(fits: &[&Fitness]) -> Vec<Vec<usize>> {
    let (feasible, mut infeasible): (Vec<usize>, Vec<usize>) =
        (0..fits.len()).partition(|&i| fits[i].is_feasible());
    let mut fronts = match feasible.first() {
        None => Vec::new(),
        Some(&i) if fits[i].objectives.len() == 2 => pareto_fronts_2d(fits, &feasible),
        Some(_) => pareto_fronts(fits, &feasible),
    };
    // Among infeasible results the smaller violation dominates, so equal violations share
    // a front and the fronts follow the violations' order.
    infeasible.sort_by(|&a, &b| {
        fits[a]
            .violation
            .total_cmp(&fits[b].violation)
            .then(a.cmp(&b))
    });
    fronts.extend(
        infeasible
            .chunk_by(|&a, &b| fits[a].violation == fits[b].violation)
            .map(<[usize]>::to_vec),
    );
    for front in &mut fronts {
        front.sort_unstable();
    }
    fronts
}

/// Pareto fronts of the members `of` by counting dominators (Deb's fast non-dominated
/// sort).
fn pareto_fronts(fits: &[&Fitness], of: &[usize]) -> Vec<Vec<usize>> {
    let n = of.len();
    let objectives = |k: usize| fits[of[k]].objectives.as_slice();
    let mut dominated_by = vec![0usize; n];
    let mut dominates: Vec<Vec<usize>> = vec![Vec::new(); n];
    for i in 0..n {
        for j in i + 1..n {
            if pareto_dominates(objectives(i), objectives(j)) {
                dominates[i].push(j);
                dominated_by[j] += 1;
            } else if pareto_dominates(objectives(j), objectives(i)) {
                dominates[j].push(i);
                dominated_by[i] += 1;
            }
        }
    }
    let mut fronts = Vec::new();
    let mut current: Vec<usize> = (0..n).filter(|&k| dominated_by[k] == 0).collect();
    while !current.is_empty() {
        let mut next = Vec::new();
        for &k in &current {
            for &j in &dominates[k] {
                dominated_by[j] -= 1;
                if dominated_by[j] == 0 {
                    next.push(j);
                }
            }
        }
        fronts.push(current.iter().map(|&k| of[k]).collect());
        current = next;
    }
    fronts
}

/// Pareto fronts of the members `of` for two objectives, in one sweep.
///
/// In order of the first objective, a member can only be dominated by members already
/// placed; a front's most recently placed member has its smallest second objective, so it
/// alone decides whether the front dominates the newcomer, and whether it does is monotone
/// across fronts, which a binary search exploits.
fn pareto_fronts_2d(fits: &[&Fitness], of: &[usize]) -> Vec<Vec<usize>> {
    let mut points: Vec<(f64, f64, usize)> = of
        .iter()
        .map(|&i| (fits[i].objectives[0], fits[i].objectives[1], i))
        .collect();
    points.sort_unstable_by(|a, b| {
        a.0.total_cmp(&b.0)
            .then(a.1.total_cmp(&b.1))
            .then(a.2.cmp(&b.2))
    });
    let mut fronts: Vec<Vec<usize>> = Vec::new();
    let mut newest: Vec<(f64, f64)> = Vec::new();
    for (f1, f2, i) in points {
        let k = newest.partition_point(|&(q1, q2)| q2 < f2 || (q2 == f2 && q1 < f1));
        if k == fronts.len() {
            fronts.push(vec![i]);
            newest.push((f1, f2));
        } else {
            fronts[k].push(i);
            newest[k] = (f1, f2);
        }
    }
    fronts
}

/// The crowding distance of each member of `front` (indices into `fits`), in the order of
/// `front`: the sum over objectives of the gap between its neighbours along that
/// objective, relative to the front's extent. The extreme members of each objective get
/// `+inf` so that selection keeps the front's ends.
///
/// An objective whose extent is zero or not finite (a front of failed results) adds
/// nothing: there is no spread to measure.
pub fn crowding(front: &[usize], fits: &[&Fitness]) -> Vec<f64> {
    let n = front.len();
    let mut distance = vec![0.0; n];
    if n <= 2 {
        distance.fill(f64::INFINITY);
        return distance;
    }
    let objectives = fits[front[0]].objectives.len();
    let mut order: Vec<(f64, usize)> = Vec::with_capacity(n);
    for m in 0..objectives {
        order.clear();
        order.extend(
            front
                .iter()
                .enumerate()
                .map(|(k, &i)| (fits[i].objectives[m], k)),
        );
        // The front's order breaks ties, so equal values are handled the same way on every
        // run.
        order.sort_unstable_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let (low, high) = (order[0], order[n - 1]);
        distance[low.1] = f64::INFINITY;
        distance[high.1] = f64::INFINITY;
        let extent = high.0 - low.0;
        if !(extent.is_finite() && extent > 0.0) {
            continue;
        }
        for w in order.windows(3) {
            distance[w[1].1] += (w[2].0 - w[0].0) / extent;
        }
    }
    distance
}

/// Rank (front number) and crowding distance of every member of `fits`, the keys of
/// NSGA-II's crowded comparison.
pub(crate) fn rank_and_crowding(fits: &[&Fitness]) -> (Vec<usize>, Vec<f64>) {
    let mut rank = vec![0; fits.len()];
    let mut crowd = vec![0.0; fits.len()];
    for (r, front) in fronts(fits).iter().enumerate() {
        for (&i, d) in front.iter().zip(crowding(front, fits)) {
            rank[i] = r;
            crowd[i] = d;
        }
    }
    (rank, crowd)
}

/// NSGA-II's environmental selection: the indices of the `keep` best of `fits`, whole fronts
/// first, then the least crowded members of the front that does not fit whole. Returned in
/// increasing order.
pub(crate) fn select(fits: &[&Fitness], keep: usize) -> Vec<usize> {
    let mut chosen = Vec::with_capacity(keep);
    for front in fronts(fits) {
        if chosen.len() + front.len() <= keep {
            chosen.extend_from_slice(&front);
        } else {
            let distance = crowding(&front, fits);
            let mut order: Vec<usize> = (0..front.len()).collect();
            order.sort_by(|&a, &b| distance[b].total_cmp(&distance[a]));
            chosen.extend(order[..keep - chosen.len()].iter().map(|&k| front[k]));
        }
        if chosen.len() == keep {
            break;
        }
    }
    chosen.sort_unstable();
    chosen
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fits(points: &[[f64; 2]]) -> Vec<Fitness> {
        points.iter().map(|p| Fitness::new(p.to_vec())).collect()
    }

    #[test]
    fn sorts_into_fronts() {
        let all = fits(&[
            [1.0, 4.0],
            [2.0, 2.0],
            [4.0, 1.0],
            [3.0, 3.0],
            [5.0, 5.0],
            [2.0, 5.0],
        ]);
        let refs: Vec<&Fitness> = all.iter().collect();
        assert_eq!(fronts(&refs), vec![vec![0, 1, 2], vec![3, 5], vec![4]]);
    }

    #[test]
    fn the_two_objective_sweep_agrees_with_pairwise_sorting() {
        let mut rng = frugal_rand::Xoshiro256pp::new(5);
        for _ in 0..200 {
            let n = 1 + rng.below(40);
            // Coarse values, so ties and duplicate points are common.
            let all: Vec<Fitness> = (0..n)
                .map(|_| Fitness::new(vec![rng.below(6) as f64, rng.below(6) as f64]))
                .collect();
            let refs: Vec<&Fitness> = all.iter().collect();
            let every: Vec<usize> = (0..n).collect();
            let mut slow = pareto_fronts(&refs, &every);
            for front in &mut slow {
                front.sort_unstable();
            }
            assert_eq!(fronts(&refs), slow);
        }
    }

    #[test]
    fn failed_and_infeasible_results_come_last() {
        let mut all = fits(&[[9.0, 9.0], [1.0, 1.0]]);
        all.push(Fitness::failed(2));
        all.push(Fitness::constrained(vec![0.0, 0.0], 1.0));
        all.push(Fitness::failed(2));
        all.push(Fitness::failed(2));
        let refs: Vec<&Fitness> = all.iter().collect();
        assert_eq!(
            fronts(&refs),
            vec![vec![1], vec![0], vec![3], vec![2, 4, 5]]
        );
        let d = crowding(&[2, 4, 5], &refs);
        assert!(d.iter().all(|x| !x.is_nan()));
    }

    #[test]
    fn crowding_favours_the_ends_and_the_lonely() {
        let all = fits(&[[0.0, 4.0], [1.0, 3.0], [1.1, 2.9], [4.0, 0.0]]);
        let refs: Vec<&Fitness> = all.iter().collect();
        let d = crowding(&[0, 1, 2, 3], &refs);
        assert!(d[0].is_infinite() && d[3].is_infinite());
        assert!((d[1] - (1.1 / 4.0 + 1.1 / 4.0)).abs() < 1e-12);
        assert!((d[2] - (3.0 / 4.0 + 3.0 / 4.0)).abs() < 1e-12);
        assert_eq!(select(&refs, 3), vec![0, 2, 3]);
    }
}
