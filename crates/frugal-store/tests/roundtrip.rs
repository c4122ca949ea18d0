//! Writing and streaming back: values, orders, resume, ranks, parallel writers.

use std::path::Path;

use frugal_store::{
    Column, DType, Dataset, DatasetWriter, EpochPlan, Order, OrderSpec, PartWriter, ReadState,
    Schema, ShardBuffer, StreamOptions, WriterOptions, merge_parts, recorded_shards,
};
use proptest::prelude::*;

fn schema() -> Schema {
    Schema::new(vec![
        Column::new("id", DType::U64, []),
        Column::new("x", DType::F32, [3]),
        Column::new("flag", DType::Bool, []),
        Column::new("h", DType::F16, [2]),
    ])
    .unwrap()
}

fn sample(id: u64) -> (Vec<u8>, Vec<u8>, Vec<u8>, Vec<u8>) {
    let x: Vec<u8> = (0..3)
        .flat_map(|k| (id as f32 * 0.5 + k as f32).to_le_bytes())
        .collect();
    let h: Vec<u8> = [id as u16, !(id as u16)]
        .iter()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    (id.to_le_bytes().to_vec(), x, vec![(id % 2) as u8], h)
}

/// A dataset of `n` samples whose `id` column is the sample's index in writing order.
/// A writer of [`schema`] rows cutting shards at `shard_bytes`.
fn writer(dir: &Path, shard_bytes: u64) -> DatasetWriter {
    let options = WriterOptions {
        shard_bytes,
        ..WriterOptions::default()
    };
    DatasetWriter::create(dir, schema(), options).unwrap()
}

fn write(dir: &Path, n: u64, shard_bytes: u64) {
    let mut w = writer(dir, shard_bytes);
    for id in 0..n {
        let (a, b, c, d) = sample(id);
        w.push_sample(&[&a, &b, &c, &d]).unwrap();
    }
    w.finish().unwrap();
}

fn read_ids(ds: &Dataset, options: StreamOptions) -> Vec<u64> {
    let mut ids = Vec::new();
    for batch in ds.stream(options).unwrap() {
        let batch = batch.unwrap();
        let id = batch.column("id").unwrap().as_slice::<u64>().unwrap();
        let x = batch.column("x").unwrap().as_slice::<f32>().unwrap();
        let flag = batch.column("flag").unwrap().bytes();
        let h = batch.column("h").unwrap().as_slice::<u16>().unwrap();
        for (i, &v) in id.iter().enumerate() {
            assert_eq!(x[3 * i + 2], v as f32 * 0.5 + 2.0);
            assert_eq!(flag[i], (v % 2) as u8);
            assert_eq!(h[2 * i + 1], !(v as u16));
        }
        ids.extend_from_slice(id);
    }
    ids
}

/// Global ids of an epoch as the plan predicts them.
fn expected(ds: &Dataset, spec: OrderSpec, seed: u64, epoch: u64) -> Vec<u64> {
    let sizes = ds.manifest().shard_sizes();
    let starts: Vec<u64> = sizes
        .iter()
        .scan(0, |acc, &s| {
            let start = *acc;
            *acc += s;
            Some(start)
        })
        .collect();
    ds.plan(spec, seed, epoch)
        .materialize()
        .iter()
        .map(|s| starts[s.shard as usize] + s.row)
        .collect()
}

#[test]
fn every_order_streams_the_planned_samples() {
    let tmp = tempfile::tempdir().unwrap();
    // 25 bytes per sample, ~10 samples per shard: 103 samples in 11 shards.
    write(tmp.path(), 103, 250);
    let ds = Dataset::open(tmp.path()).unwrap();
    assert_eq!(ds.len(), 103);
    assert_eq!(ds.manifest().shards.len(), 11);
    for order in Order::ALL {
        let spec = OrderSpec {
            order,
            window: 17,
            spread: 3,
        };
        let ids = read_ids(&ds, StreamOptions::new(spec, 11, 2, 8));
        assert_eq!(ids, expected(&ds, spec, 11, 2), "{order}");
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, (0..103).collect::<Vec<_>>(), "{order}");
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(48))]

    /// Stopping after any number of samples and resuming from the saved state yields
    /// exactly the rest of the uninterrupted epoch, for any order and rank.
    #[test]
    fn prefix_plus_resume_is_the_full_epoch(
        order in prop::sample::select(Order::ALL.to_vec()),
        window in 1u64..30,
        seed: u64,
        batch in 1usize..9,
        ranks in 1u64..4,
        split_frac in 0.0f64..1.0,
    ) {
        let tmp = tempfile::tempdir().unwrap();
        write(tmp.path(), 61, 150);
        let ds = Dataset::open(tmp.path()).unwrap();
        let spec = OrderSpec { order, window, spread: 2 };
        let mut union = Vec::new();
        for rank in 0..ranks {
            let mut options = StreamOptions::new(spec, seed, 1, batch);
            options.rank = rank;
            options.ranks = ranks;
            let full = read_ids(&ds, options.clone());
            // Take whole batches up to the split, as a training loop would.
            let mut stream = ds.stream(options.clone()).unwrap();
            let stop = (full.len() as f64 * split_frac) as u64;
            let mut prefix = Vec::new();
            let mut state = options.state;
            while state.consumed < stop {
                let b = stream.next().unwrap().unwrap();
                prefix.extend_from_slice(b.column("id").unwrap().as_slice::<u64>().unwrap());
                state = b.state;
            }
            drop(stream);
            options.state = state;
            let rest = read_ids(&ds, options);
            prefix.extend(rest);
            prop_assert_eq!(&prefix, &full);
            union.extend(full);
        }
        // Ranks: concatenated in rank order they are the one global order.
        prop_assert_eq!(union, expected(&ds, spec, seed, 1));
    }
}

#[test]
fn a_resume_past_the_end_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), 20, 150);
    let ds = Dataset::open(tmp.path()).unwrap();
    let mut o = StreamOptions::new(OrderSpec::for_budget(Order::Window, 1 << 20, 25), 0, 0, 4);
    o.state = ReadState {
        seed: 0,
        epoch: 0,
        consumed: 21,
    };
    let err = ds.stream(o).unwrap_err().to_string();
    assert!(err.contains("past the end"), "{err}");
}

#[test]
fn a_killed_writer_continues_after_its_last_complete_shard() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = writer(tmp.path(), 250);
    for id in 0..37 {
        let (a, b, c, d) = sample(id);
        w.push_sample(&[&a, &b, &c, &d]).unwrap();
        if id == 29 {
            w.sync().unwrap();
        }
    }
    // Killed: the partial shard in memory is lost, debris of an unfinished write remains.
    drop(w);
    std::fs::write(
        tmp.path().join(".shard-000003.safetensors.999999-0.tmp"),
        b"junk",
    )
    .unwrap();
    std::fs::write(tmp.path().join("shard-000009.safetensors"), b"junk").unwrap();
    let err = Dataset::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("unfinished"), "{err}");

    let mut w = writer(tmp.path(), 250);
    let done = w.samples_written();
    assert_eq!(done, 30);
    for id in done..103 {
        let (a, b, c, d) = sample(id);
        w.push_sample(&[&a, &b, &c, &d]).unwrap();
    }
    w.finish().unwrap();
    assert!(
        !tmp.path()
            .join(".shard-000003.safetensors.999999-0.tmp")
            .exists()
    );

    let reference = tempfile::tempdir().unwrap();
    write(reference.path(), 103, 250);
    let a = Dataset::open(tmp.path()).unwrap();
    let b = Dataset::open(reference.path()).unwrap();
    assert_eq!(a.manifest(), b.manifest());
    let spec = OrderSpec {
        order: Order::Sequential,
        window: 50,
        spread: 1,
    };
    assert_eq!(
        read_ids(&a, StreamOptions::new(spec, 0, 0, 7)),
        (0..103).collect::<Vec<_>>()
    );
}

#[test]
fn a_finished_dataset_is_not_overwritten() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), 5, 150);
    let err = DatasetWriter::create(tmp.path(), schema(), WriterOptions::default()).unwrap_err();
    assert!(
        err.to_string().contains("already holds a complete dataset"),
        "{err}"
    );
    let other = tempfile::tempdir().unwrap();
    std::fs::write(other.path().join("notes.txt"), "mine").unwrap();
    let err = DatasetWriter::create(other.path(), schema(), WriterOptions::default()).unwrap_err();
    assert!(err.to_string().contains("notes.txt"), "{err}");
}

#[test]
fn parallel_parts_merge_into_one_dataset() {
    let tmp = tempfile::tempdir().unwrap();
    let per_shard = 10u64;
    let shards = 9u64;
    std::thread::scope(|s| {
        for t in 0..3u64 {
            let dir = tmp.path();
            s.spawn(move || {
                let mut part = PartWriter::create(dir, schema(), &format!("t{t}")).unwrap();
                for i in (t..shards).step_by(3) {
                    let mut buf = ShardBuffer::new(schema());
                    for id in i * per_shard..(i + 1) * per_shard {
                        let (a, b, c, d) = sample(id);
                        buf.push_rows(1, &[&a, &b, &c, &d]).unwrap();
                    }
                    part.write_shard(i, &mut buf).unwrap();
                }
                part.finish().unwrap();
            });
        }
    });
    assert_eq!(recorded_shards(tmp.path()).unwrap().len(), 9);
    let m = merge_parts(tmp.path(), Default::default()).unwrap();
    assert!(m.complete);
    assert!(!tmp.path().join("parts").exists());
    let reference = tempfile::tempdir().unwrap();
    // Same samples per shard as the parts: 10 × 25 bytes.
    write(reference.path(), 90, 250);
    assert_eq!(
        m.shards,
        Dataset::open(reference.path()).unwrap().manifest().shards
    );
}

#[test]
fn many_generator_threads_never_trip_over_each_other() {
    use frugal_store::synthetic::{SyntheticSpec, generate};
    let spec = SyntheticSpec {
        samples: 3000,
        features: 4,
        classes: 3,
        hidden: 4,
        seed: 1,
        shard_bytes: 200,
        sample_stream: 0,
    };
    let reference = tempfile::tempdir().unwrap();
    let want = generate(reference.path(), &spec, 1, &|_| {}).unwrap();
    for _ in 0..4 {
        let tmp = tempfile::tempdir().unwrap();
        let got = generate(tmp.path(), &spec, 24, &|_| {}).unwrap();
        assert_eq!(got, want);
    }
}

#[test]
fn writers_do_not_take_over_each_others_directories() {
    // A single writer refuses a directory holding a parallel writer's parts and shards.
    let tmp = tempfile::tempdir().unwrap();
    let mut part = PartWriter::create(tmp.path(), schema(), "a").unwrap();
    let mut buf = ShardBuffer::new(schema());
    let (a, b, c, d) = sample(0);
    buf.push_rows(1, &[&a, &b, &c, &d]).unwrap();
    part.write_shard(0, &mut buf).unwrap();
    // Rewriting a shard replaces its record instead of listing it twice.
    buf.push_rows(1, &[&a, &b, &c, &d]).unwrap();
    part.write_shard(0, &mut buf).unwrap();
    assert!(part.write_shard(1, &mut buf).is_err(), "an empty shard");
    part.finish().unwrap();
    let err = DatasetWriter::create(tmp.path(), schema(), WriterOptions::default()).unwrap_err();
    assert!(err.to_string().contains("not empty"), "{err}");
    assert!(tmp.path().join("shard-000000.safetensors").exists());
    assert_eq!(
        merge_parts(tmp.path(), Default::default()).unwrap().samples,
        1
    );

    // A parallel writer refuses a single writer's unfinished dataset.
    let tmp = tempfile::tempdir().unwrap();
    let mut w = writer(tmp.path(), 25);
    w.push_sample(&[&a, &b, &c, &d]).unwrap();
    drop(w);
    let err = PartWriter::create(tmp.path(), schema(), "b").unwrap_err();
    assert!(err.to_string().contains("single writer"), "{err}");
}

#[test]
fn a_window_budget_is_kept_whatever_the_sample_size() {
    for sample_bytes in [8u64, 12 << 10, 3 << 20, 60 << 20] {
        let spec = OrderSpec::for_budget(Order::Window, 64 << 20, sample_bytes);
        assert!(spec.spread <= spec.window, "{spec:?}");
        let plan = EpochPlan::new(spec, 0, 0, &[1; 40]);
        for w in 0..plan.windows() {
            let (a, b) = plan.window_range(w);
            assert!(
                (b - a) * sample_bytes <= (64 << 20).max(sample_bytes),
                "{spec:?}"
            );
        }
    }
}

#[test]
fn verify_checks_column_checksums_too() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path(), 30, 250);
    let path = tmp.path().join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    m["shards"][1]["column_checksums"]["x"] = "xxh3-64:0000000000000000".into();
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let report = frugal_store::verify(tmp.path(), |_| {}).unwrap();
    assert_eq!(report.faults.len(), 1);
    assert_eq!(report.faults[0].file, "shard-000001.safetensors");
    assert!(
        report.faults[0].fault.contains("column `x`"),
        "{:?}",
        report.faults
    );

    m["shards"][1]["samples"] = (1u64 << 62).into();
    m["samples"] = (1u64 << 62).into();
    std::fs::write(&path, serde_json::to_vec(&m).unwrap()).unwrap();
    let err = Dataset::open(tmp.path()).unwrap_err().to_string();
    assert!(err.contains("cannot hold"), "{err}");
}

#[test]
fn every_shard_is_recorded_when_written_and_sync_keeps_the_partial_one() {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = writer(tmp.path(), 250);
    for id in 0..15 {
        let (a, b, c, d) = sample(id);
        w.push_sample(&[&a, &b, &c, &d]).unwrap();
    }
    // The first shard is on disk and recorded at once, not a second later.
    let on_disk = || -> u64 {
        let m: serde_json::Value =
            serde_json::from_slice(&std::fs::read(tmp.path().join("manifest.json")).unwrap())
                .unwrap();
        m["samples"].as_u64().unwrap()
    };
    assert_eq!(on_disk(), 10);
    assert_eq!(w.samples_written(), 10);
    w.sync().unwrap();
    assert_eq!(on_disk(), 15);
    assert_eq!(w.samples_written(), 15);
    drop(w); // killed
    let w = writer(tmp.path(), 250);
    assert_eq!(w.samples_written(), 15);
    let m = w.finish().unwrap();
    assert_eq!(m.shard_sizes(), vec![10, 5]);
}

#[test]
fn a_users_own_dot_tmp_files_are_neither_accepted_nor_deleted() {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join(".notes.tmp"), "mine").unwrap();
    let err = DatasetWriter::create(tmp.path(), schema(), WriterOptions::default()).unwrap_err();
    assert!(err.to_string().contains(".notes.tmp"), "{err}");
    assert!(tmp.path().join(".notes.tmp").exists());
}

#[test]
fn a_shard_selection_streams_exactly_its_shards() {
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), 1000, 4096);
    let ds = Dataset::open(dir.path()).unwrap();
    let shards = ds.manifest().shards.len();
    assert!(shards >= 4, "{shards}");
    let sizes = ds.manifest().shard_sizes();
    let cut = shards / 2;
    let first: u64 = sizes[..cut].iter().sum();
    let spec = OrderSpec {
        order: Order::Sequential,
        window: 64,
        spread: 1,
    };
    let head = ds.select_shards(0..cut).unwrap();
    let tail = ds.select_shards(cut..shards).unwrap();
    assert_eq!(head.len() + tail.len(), ds.len());
    let ids = |d: &Dataset| read_ids(d, StreamOptions::new(spec, 0, 0, 50));
    assert_eq!(ids(&head), (0..first).collect::<Vec<_>>());
    assert_eq!(ids(&tail), (first..1000).collect::<Vec<_>>());
    assert!(ds.select_shards(cut..cut).is_err());
    assert!(ds.select_shards(0..shards + 1).is_err());
}
