//! Isolation forest (Liu, Ting & Zhou, 2008) over a fixed training matrix.
//!
//! Invariant: a forest is a pure function of its training rows and seed, so
//! it is never persisted; the engine keeps the rows and rebuilds it. Scores
//! follow the paper: `s(x) = 2^(-E[h(x)] / c(psi))`, near 1 for points that
//! isolate quickly, about 0.5 or less for ordinary ones.

/// SplitMix64: a tiny, fast, deterministic generator (no external crate, and
/// the same sequence on every platform, which batch invariance relies on).
#[derive(Debug, Clone)]
pub struct SplitMix64(u64);

impl SplitMix64 {
    /// A generator seeded with `seed`.
    pub fn new(seed: u64) -> Self {
        Self(seed)
    }

    /// Next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// Uniform in `0..n` (`n > 0`).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_f64() * n as f64) as usize % n.max(1)
    }

    /// A standard normal draw (Box-Muller over two uniforms).
    pub fn normal(&mut self) -> f64 {
        let u = self.next_f64().max(1e-300);
        let v = self.next_f64();
        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

/// One node of a tree, 16 bytes. A split sends `x[feature] < value` to
/// `child` and the rest to `child + 1` (children are stored side by side);
/// a leaf (`feature == LEAF`) holds in `value` the depth it adds,
/// `c(size)`, precomputed so scoring does no logarithms.
#[derive(Debug, Clone, Copy)]
struct Node {
    value: f64,
    feature: u32,
    child: u32,
}

const LEAF: u32 = u32::MAX;

/// Slots of a padded tree: splits in 1-based heap order (the root at 1;
/// `x[feature] < value` goes to `2i`, the rest to `2i + 1`), and the path
/// lengths of its leaves.
const SLOTS: usize = 256;
/// Deepest tree kept in padded form: `2^8 - 1` splits fit in [`SLOTS`].
const MAX_COMPLETE_DEPTH: usize = 8;
/// Most features the padded walk handles (a fixed-size block of lanes).
const MAX_COMPLETE_FEATURES: usize = 16;
/// Points walked through a tree in lockstep. 16 measured fastest here
/// (`cargo bench`: 8 took 373 ns per row, 16 took 324, 32 took 578; with
/// the 1-based layout and unmasked block, 8 took 350–452 and 16 265–272).
const LANES: usize = 16;
// A split's block offset fits a byte.
const _: () = assert!((MAX_COMPLETE_FEATURES - 1) * LANES <= u8::MAX as usize);

/// A tree padded to a complete tree of the forest's depth, for scoring many
/// points without a leaf test per step: below a real leaf the splits are
/// dummies and every padded leaf holds that leaf's path length. Fixed-size
/// arrays indexed by masked positions: a step has no bounds check.
#[derive(Debug, Clone)]
struct Padded {
    values: [f64; SLOTS],
    /// Each split's feature times [`LANES`]: its row in a chunk's block.
    offsets: [u8; SLOTS],
    /// Path length (depth plus `c(size)`) of each of the `2^depth` leaves.
    leaves: [f64; SLOTS],
}

/// Every tree in padded form.
#[derive(Debug, Clone, Default)]
struct Complete {
    depth: usize,
    trees: Vec<Padded>,
}

/// A trained isolation forest: every tree in one flat array.
#[derive(Debug, Clone)]
pub(crate) struct IsolationForest {
    nodes: Vec<Node>,
    /// The same trees in complete form, if not too deep.
    complete: Option<Complete>,
    /// No tree is deeper than this.
    max_depth: usize,
    roots: Vec<u32>,
    features: usize,
    /// `c(psi)`: the average path length of an unsuccessful BST search,
    /// the normaliser of the score.
    norm: f64,
}

/// Average path length of an unsuccessful search in a BST of `n` points.
pub(crate) fn average_path_length(n: usize) -> f64 {
    match n {
        0 | 1 => 0.0,
        2 => 1.0,
        _ => {
            let n = n as f64;
            2.0 * ((n - 1.0).ln() + 0.577_215_664_901_532_9) - 2.0 * (n - 1.0) / n
        }
    }
}

impl IsolationForest {
    /// Trains `n_trees` trees, each on `sample_size` rows drawn without
    /// replacement from `rows` (every row must have the same length).
    /// Returns `None` for an empty or ragged matrix.
    pub(crate) fn train(
        rows: &[Vec<f64>],
        n_trees: usize,
        sample_size: usize,
        seed: u64,
    ) -> Option<Self> {
        let features = rows.first()?.len();
        if features == 0 || features >= LEAF as usize || rows.iter().any(|r| r.len() != features) {
            return None;
        }
        let psi = sample_size.min(rows.len()).max(1);
        // `c(n)` of every leaf size, worked out once instead of per node.
        let paths: Vec<f64> = (0..=psi).map(average_path_length).collect();
        // Column-major: a split scans one feature over many rows.
        let columns: Vec<Vec<f64>> = (0..features)
            .map(|f| rows.iter().map(|r| r[f]).collect())
            .collect();
        let max_depth = (psi as f64).log2().ceil() as usize;
        let mut rng = SplitMix64::new(seed);
        let mut pool: Vec<usize> = (0..rows.len()).collect();
        let mut nodes = Vec::with_capacity(n_trees * 2 * psi);
        let mut roots = Vec::with_capacity(n_trees);
        for _ in 0..n_trees.max(1) {
            // Partial Fisher-Yates: the first psi entries are the sample.
            for i in 0..psi {
                let j = i + rng.below(pool.len() - i);
                pool.swap(i, j);
            }
            let mut idx = pool[..psi].to_vec();
            let root = nodes.len();
            nodes.push(Node {
                value: 0.0,
                feature: LEAF,
                child: 0,
            });
            roots.push(root as u32);
            let at = Place { me: root, depth: 0 };
            build(
                &columns, &mut idx, at, max_depth, &paths, &mut rng, &mut nodes,
            );
        }
        let mut forest = Self {
            nodes,
            complete: None,
            max_depth,
            roots,
            features,
            norm: average_path_length(psi),
        };
        forest.complete = (max_depth <= MAX_COMPLETE_DEPTH && features <= MAX_COMPLETE_FEATURES)
            .then(|| forest.to_complete());
        Some(forest)
    }

    /// The trees in padded form (`max_depth` at most [`MAX_COMPLETE_DEPTH`]).
    fn to_complete(&self) -> Complete {
        let depth = self.max_depth;
        let trees = self
            .roots
            .iter()
            .map(|&root| {
                let mut t = Padded {
                    values: [0.0; SLOTS],
                    offsets: [0; SLOTS],
                    leaves: [0.0; SLOTS],
                };
                self.fill(root as usize, 1, 0, depth, &mut t);
                t
            })
            .collect();
        Complete { depth, trees }
    }

    /// Copies node `i`, found at heap position `at` of level `level`, and
    /// its subtree into padded form.
    fn fill(&self, i: usize, at: usize, level: usize, depth: usize, t: &mut Padded) {
        let n = self.nodes[i];
        if n.feature == LEAF {
            // Scoring adds the depth and the leaf's value, in that order.
            let path = f64::from(level as u32) + n.value;
            // The padded leaves under heap position `at`.
            let span = 1usize << (depth - level);
            let first = (at << (depth - level)) - (1 << depth);
            t.leaves[first..first + span].fill(path);
            return;
        }
        t.values[at] = n.value;
        // Padding is only chosen for at most 16 features: this fits a byte.
        t.offsets[at] = (n.feature as usize * LANES) as u8;
        let child = n.child as usize;
        self.fill(child, 2 * at, level + 1, depth, t);
        self.fill(child + 1, 2 * at + 1, level + 1, depth, t);
    }

    fn leaf_of(&self, root: u32, x: &[f64], mut visit: impl FnMut(usize)) -> (usize, f64) {
        let mut i = root as usize;
        let mut depth = 0.0;
        loop {
            let n = self.nodes[i];
            if n.feature == LEAF {
                return (i, depth + n.value);
            }
            let f = n.feature as usize;
            visit(f);
            i = n.child as usize + usize::from(x[f] >= n.value);
            depth += 1.0;
        }
    }

    /// Anomaly score `s(x)` in (0, 1]; `x` must have [`Self::features`] values.
    pub(crate) fn score(&self, x: &[f64]) -> f64 {
        let total: f64 = self
            .roots
            .iter()
            .map(|&r| self.leaf_of(r, x, |_| {}).1)
            .sum();
        if self.norm <= 0.0 {
            return 0.5;
        }
        2f64.powf(-(total / self.roots.len() as f64) / self.norm)
    }

    /// Scores many points at once (`xs` row-major, [`Self::features`]
    /// values each) into `out`, with the same results as [`Self::score`].
    /// Tree by tree, [`LANES`] points in lockstep with branch-free steps: the
    /// tree stays in cache and the independent walks overlap, where
    /// one walk at a time waits on every load and mispredicts every branch.
    pub(crate) fn score_many(&self, xs: &[f64], out: &mut [f64]) {
        let k = self.features;
        let n = out.len().min(xs.len() / k.max(1));
        if n < LANES {
            // Too few to fill the lanes (one row scored inline): one walk each.
            for (o, x) in out[..n].iter_mut().zip(xs.chunks(k.max(1))) {
                *o = self.score(x);
            }
            return;
        }
        out[..n].iter_mut().for_each(|o| *o = 0.0);
        match &self.complete {
            Some(c) => self.sum_complete(c, &xs[..n * k], &mut out[..n]),
            None => self.sum_nodes(&xs[..n * k], &mut out[..n]),
        }
        let trees = self.roots.len() as f64;
        for o in &mut out[..n] {
            *o = if self.norm <= 0.0 {
                0.5
            } else {
                2f64.powf(-(*o / trees) / self.norm)
            };
        }
    }

    /// Adds each point's path length over all trees, walking the padded
    /// trees: exactly `depth` branch-free steps per tree and point.
    fn sum_complete(&self, c: &Complete, xs: &[f64], out: &mut [f64]) {
        let k = self.features;
        let first_leaf = 1usize << c.depth;
        // Feature-major copy of a chunk: `block[f * LANES + j]` is point j's
        // feature f (a short last chunk leaves stale lanes, whose sums are
        // never read). Sized so that any byte offset plus a lane is in
        // bounds: a step needs neither a mask nor a bounds check.
        let mut block = [0.0; u8::MAX as usize + LANES];
        for (rows, sums) in xs.chunks(LANES * k).zip(out.chunks_mut(LANES)) {
            for (j, row) in rows.chunks(k).enumerate() {
                for (f, &v) in row.iter().enumerate() {
                    block[f * LANES + j] = v;
                }
            }
            let mut total = [0.0; LANES];
            for t in &c.trees {
                let mut at = [1usize; LANES];
                for _ in 0..c.depth {
                    for (j, a) in at.iter_mut().enumerate() {
                        let s = *a % SLOTS;
                        let x = block[usize::from(t.offsets[s]) + j];
                        *a = 2 * *a + usize::from(x >= t.values[s]);
                    }
                }
                // Leaves sit at heap positions `2^depth ..= 2^(depth+1) - 1`.
                for (sum, a) in total.iter_mut().zip(at) {
                    *sum += t.leaves[(a - first_leaf) % SLOTS];
                }
            }
            for (o, t) in sums.iter_mut().zip(total) {
                *o += t;
            }
        }
    }

    /// [`Self::sum_complete`] for trees too deep or wide to pad: [`LANES`]
    /// points walk each tree in lockstep, so their independent loads overlap.
    fn sum_nodes(&self, xs: &[f64], out: &mut [f64]) {
        let k = self.features;
        for &root in &self.roots {
            for (rows, sums) in xs.chunks(LANES * k).zip(out.chunks_mut(LANES)) {
                let mut idx = [root as usize; LANES];
                let mut depth = [0u32; LANES];
                for _ in 0..self.max_depth {
                    for j in 0..sums.len() {
                        let node = self.nodes[idx[j]];
                        let leaf = node.feature == LEAF;
                        let f = if leaf { 0 } else { node.feature as usize };
                        let right = usize::from(rows[j * k + f] >= node.value);
                        idx[j] = if leaf {
                            idx[j]
                        } else {
                            node.child as usize + right
                        };
                        depth[j] += u32::from(!leaf);
                    }
                }
                for (j, sum) in sums.iter_mut().enumerate() {
                    // A leaf's value is the depth its size adds, c(size).
                    *sum += f64::from(depth[j]) + self.nodes[idx[j]].value;
                }
            }
        }
    }

    /// For each feature, the share of trees whose last split before `x`'s
    /// leaf used it: which channels isolated the point.
    pub(crate) fn attribution(&self, x: &[f64]) -> Vec<f64> {
        let mut counts = vec![0.0; self.features];
        for &r in &self.roots {
            let mut last = None;
            self.leaf_of(r, x, |f| last = Some(f));
            if let Some(f) = last {
                counts[f] += 1.0;
            }
        }
        let n = self.roots.len() as f64;
        counts.iter_mut().for_each(|c| *c /= n);
        counts
    }
}

/// Where a node goes: its (already allocated) slot and its depth.
#[derive(Clone, Copy)]
struct Place {
    me: usize,
    depth: usize,
}

/// Fills node `at.me` for the rows in `idx`; `paths[n]` is `c(n)`.
fn build(
    columns: &[Vec<f64>],
    idx: &mut [usize],
    at: Place,
    max_depth: usize,
    paths: &[f64],
    rng: &mut SplitMix64,
    nodes: &mut Vec<Node>,
) {
    let Place { me, depth } = at;
    nodes[me] = Node {
        value: paths[idx.len()],
        feature: LEAF,
        child: 0,
    };
    if idx.len() <= 1 || depth >= max_depth {
        return;
    }
    let features = columns.len();
    // Pick a feature that is not constant in this node; try each once from a
    // random start so constant channels never end the tree early.
    let start = rng.below(features);
    for k in 0..features {
        let f = (start + k) % features;
        let column = &columns[f];
        let (lo, hi) = idx
            .iter()
            .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), &i| {
                (lo.min(column[i]), hi.max(column[i]))
            });
        if hi > lo {
            let value = lo + rng.next_f64() * (hi - lo);
            // Partition in place: values below the split first. Branch-free
            // (always swap, advance when below): a split sends rows either
            // way at random, which no branch predictor follows. The order
            // within each side differs from a branching partition's, but a
            // tree depends only on which rows go where.
            let mut mid = 0;
            for j in 0..idx.len() {
                let below = column[idx[j]] < value;
                idx.swap(j, mid);
                mid += usize::from(below);
            }
            if mid == 0 || mid == idx.len() {
                continue;
            }
            let child = nodes.len();
            let leaf = Node {
                value: 0.0,
                feature: LEAF,
                child: 0,
            };
            nodes.push(leaf);
            nodes.push(leaf);
            nodes[me] = Node {
                value,
                feature: f as u32,
                child: child as u32,
            };
            let (l, r) = idx.split_at_mut(mid);
            let (left, right) = (
                Place {
                    me: child,
                    depth: depth + 1,
                },
                Place {
                    me: child + 1,
                    depth: depth + 1,
                },
            );
            build(columns, l, left, max_depth, paths, rng, nodes);
            build(columns, r, right, max_depth, paths, rng, nodes);
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaussian_rows(n: usize, seed: u64) -> Vec<Vec<f64>> {
        gaussian_rows_of(n, 3, seed)
    }

    fn gaussian_rows_of(n: usize, width: usize, seed: u64) -> Vec<Vec<f64>> {
        let mut rng = SplitMix64::new(seed);
        (0..n)
            .map(|_| {
                (0..width)
                    .map(|_| {
                        // Box-Muller.
                        let u = rng.next_f64().max(1e-12);
                        let v = rng.next_f64();
                        (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
                    })
                    .collect()
            })
            .collect()
    }

    #[test]
    fn outlier_scores_higher_than_inliers() {
        let rows = gaussian_rows(512, 1);
        let f = IsolationForest::train(&rows, 100, 256, 7).unwrap();
        let inlier = f.score(&[0.0, 0.0, 0.0]);
        let outlier = f.score(&[6.0, 0.0, 0.0]);
        assert!(inlier < 0.5, "inlier {inlier}");
        assert!(
            outlier > 0.55 && outlier > inlier + 0.1,
            "outlier {outlier}"
        );
        // Far from everything on every axis: isolated almost at once.
        assert!(f.score(&[8.0, -8.0, 8.0]) > 0.7);
        let a = f.attribution(&[6.0, 0.0, 0.0]);
        assert!(a[0] > a[1] && a[0] > a[2], "{a:?}");
    }

    /// Batch scores equal single scores bit for bit, on complete trees
    /// (any depth up to the limit, including a lone root) and beyond.
    fn assert_batch_equals_single(rows: &[Vec<f64>], trees: usize, sample: usize) {
        let f = IsolationForest::train(rows, trees, sample, 9).unwrap();
        assert_eq!(
            f.complete.is_some(),
            f.max_depth <= MAX_COMPLETE_DEPTH && f.features <= MAX_COMPLETE_FEATURES
        );
        let flat: Vec<f64> = rows.iter().flatten().copied().collect();
        let mut out = vec![0.0; rows.len()];
        f.score_many(&flat, &mut out);
        for (r, s) in rows.iter().zip(&out) {
            assert_eq!(f.score(r), *s, "sample {sample}");
        }
    }

    #[test]
    fn batch_scores_equal_single_scores() {
        let rows = gaussian_rows(400, 5);
        for sample in [1, 2, 3, 17, 128, 400] {
            assert_batch_equals_single(&rows, 30, sample);
        }
        // Too deep to pad: scored node by node.
        let rows = gaussian_rows(5000, 6);
        assert_batch_equals_single(&rows, 3, 5000);
        // As wide as padding goes, and too wide.
        for width in [16, 17] {
            assert_batch_equals_single(&gaussian_rows_of(300, width, 4), 20, 256);
        }
    }

    proptest::proptest! {
        #[test]
        fn batch_scores_equal_single_scores_for_any_forest(
            seed in 0u64..1000,
            n in 1usize..300,
            sample in 1usize..300,
            trees in 1usize..12,
            width in 1usize..20,
        ) {
            let rows = gaussian_rows_of(n, width, seed);
            let f = IsolationForest::train(&rows, trees, sample, seed).unwrap();
            let mut probe = rows.clone();
            let odd = [f64::NAN, 1e300, -1e300, 0.0, -0.0, f64::INFINITY];
            probe.push((0..width).map(|i| odd[i % 6]).collect());
            probe.push((0..width).map(|i| odd[(i + 3) % 6]).collect());
            let flat: Vec<f64> = probe.iter().flatten().copied().collect();
            let mut out = vec![0.0; probe.len()];
            f.score_many(&flat, &mut out);
            for (r, s) in probe.iter().zip(&out) {
                proptest::prop_assert_eq!(f.score(r).to_bits(), s.to_bits());
            }
        }
    }

    #[test]
    fn deterministic_for_a_seed() {
        let rows = gaussian_rows(300, 2);
        let a = IsolationForest::train(&rows, 20, 128, 3).unwrap();
        let b = IsolationForest::train(&rows, 20, 128, 3).unwrap();
        for r in &rows[..20] {
            assert_eq!(a.score(r), b.score(r));
        }
    }

    #[test]
    fn constant_and_empty_inputs_do_not_panic() {
        assert!(IsolationForest::train(&[], 10, 10, 0).is_none());
        let rows = vec![vec![1.0, 2.0]; 50];
        let f = IsolationForest::train(&rows, 10, 32, 0).unwrap();
        let s = f.score(&[1.0, 2.0]);
        assert!(s.is_finite() && s > 0.0 && s <= 1.0);
        let ragged = vec![vec![1.0], vec![1.0, 2.0]];
        assert!(IsolationForest::train(&ragged, 10, 10, 0).is_none());
    }

    #[test]
    fn path_length_normaliser() {
        assert_eq!(average_path_length(1), 0.0);
        assert_eq!(average_path_length(2), 1.0);
        assert!((average_path_length(256) - 10.2448).abs() < 1e-3);
    }
}
