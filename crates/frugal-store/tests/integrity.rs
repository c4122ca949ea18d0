//! Damage on disk is an error naming the shard, never a panic, for readers and `verify`;
//! arbitrary bytes as a manifest or shard header never panic the parsers.

use std::fs::OpenOptions;
use std::path::Path;

use frugal_store::shard::{header_len, parse_header};
use frugal_store::{
    Column, DType, Dataset, DatasetWriter, Manifest, Order, OrderSpec, Schema, StreamOptions,
    Verify, WriterOptions, verify,
};
use proptest::prelude::*;

fn schema() -> Schema {
    Schema::new(vec![
        Column::new("x", DType::F32, [4]),
        Column::new("y", DType::I64, []),
    ])
    .unwrap()
}

/// 200 samples of 24 bytes in shards of 40 samples: 5 shards.
fn write(dir: &Path) {
    let mut w = DatasetWriter::create(
        dir,
        schema(),
        WriterOptions {
            shard_bytes: 40 * 24,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    for i in 0..200u32 {
        let x: Vec<u8> = (0..4)
            .flat_map(|k| (i as f32 + k as f32).to_le_bytes())
            .collect();
        w.push_sample(&[&x, &(i as i64).to_le_bytes()]).unwrap();
    }
    w.finish().unwrap();
}

fn read_all(dir: &Path, order: Order, verify: Verify) -> Result<u64, String> {
    let ds = Dataset::open(dir).map_err(|e| e.to_string())?;
    let mut o = StreamOptions::new(
        OrderSpec {
            order,
            window: 64,
            spread: 2,
        },
        3,
        0,
        16,
    );
    o.verify = verify;
    let mut n = 0;
    for b in ds.stream(o).map_err(|e| e.to_string())? {
        n += b.map_err(|e| e.to_string())?.samples as u64;
    }
    Ok(n)
}

const SHARD: &str = "shard-000002.safetensors";

#[test]
fn a_flipped_byte_is_caught_by_verify_and_by_reads() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path());
    assert!(verify(tmp.path(), |_| {}).unwrap().ok());
    let path = tmp.path().join(SHARD);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 100; // inside the data
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();

    let report = verify(tmp.path(), |_| {}).unwrap();
    assert_eq!(report.faults.len(), 1);
    assert_eq!(report.faults[0].file, SHARD);
    assert!(report.faults[0].fault.contains("checksum mismatch"));

    for order in Order::ALL {
        let err = read_all(tmp.path(), order, Verify::OnRead).unwrap_err();
        assert!(
            err.contains(SHARD) && err.contains("corrupted"),
            "{order}: {err}"
        );
    }
    let err = read_all(tmp.path(), Order::Full, Verify::Before).unwrap_err();
    assert!(
        err.contains(SHARD) && err.contains("checksum mismatch"),
        "{err}"
    );
    // Unchecked reads go through: the choice is the caller's.
    assert_eq!(
        read_all(tmp.path(), Order::Window, Verify::Off).unwrap(),
        200
    );
}

#[test]
fn a_truncated_shard_is_named_on_open_and_by_verify() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path());
    let path = tmp.path().join(SHARD);
    let len = std::fs::metadata(&path).unwrap().len();
    OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(len - 7)
        .unwrap();
    let err = read_all(tmp.path(), Order::Window, Verify::Off).unwrap_err();
    assert!(err.contains(SHARD) && err.contains("truncated"), "{err}");
    let report = verify(tmp.path(), |_| {}).unwrap();
    assert_eq!(report.faults.len(), 1);
    assert!(
        report.faults[0].fault.contains("truncated"),
        "{:?}",
        report.faults
    );
}

#[test]
fn a_shard_truncated_while_streaming_is_a_read_error() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path());
    let ds = Dataset::open(tmp.path()).unwrap();
    // Opened (sizes checked) before the damage: the read itself must report it.
    OpenOptions::new()
        .write(true)
        .open(tmp.path().join(SHARD))
        .unwrap()
        .set_len(300)
        .unwrap();
    let o = StreamOptions::new(
        OrderSpec {
            order: Order::Sequential,
            window: 64,
            spread: 1,
        },
        0,
        0,
        16,
    );
    let err = ds
        .stream(o)
        .unwrap()
        .find_map(Result::err)
        .expect("an error")
        .to_string();
    assert!(err.contains(SHARD), "{err}");
}

#[test]
fn a_missing_shard_and_a_damaged_header_are_named() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path());
    std::fs::remove_file(tmp.path().join("shard-000004.safetensors")).unwrap();
    let err = read_all(tmp.path(), Order::Window, Verify::Off).unwrap_err();
    assert!(
        err.contains("shard-000004.safetensors") && err.contains("missing"),
        "{err}"
    );

    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path());
    let path = tmp.path().join(SHARD);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[12] = b'#'; // inside the JSON header
    std::fs::write(&path, &bytes).unwrap();
    let err = read_all(tmp.path(), Order::Sequential, Verify::Off).unwrap_err();
    assert!(err.contains(SHARD) && err.contains("header"), "{err}");
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn manifest_parsing_never_panics(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        let _ = Manifest::from_json(Path::new("m.json"), &bytes);
    }

    #[test]
    fn header_parsing_never_panics(
        bytes in prop::collection::vec(any::<u8>(), 0..512), file_bytes: u64, prefix: [u8; 8],
    ) {
        let _ = header_len(prefix, file_bytes);
        let _ = parse_header(&bytes, file_bytes);
    }

    /// Structured garbage reaches deeper than random bytes: JSON objects with plausible keys.
    #[test]
    fn plausible_headers_never_panic(
        dtype in prop::sample::select(vec!["F32", "U8", "BOOL", "X", ""]),
        shape in prop::collection::vec(any::<u64>(), 0..4),
        a: u64, b: u64, extra in 0u64..64,
    ) {
        let json = format!(
            r#"{{"t":{{"dtype":"{dtype}","shape":{shape:?},"data_offsets":[{a},{b}]}}}}"#
        );
        let _ = parse_header(json.as_bytes(), 8 + json.len() as u64 + extra);
    }
}

/// Every single-byte flip and every truncation of a real shard: opening and reading it
/// either succeeds (the flip hit padding or was caught by no check the caller asked for)
/// or fails with an error naming the shard. Never a panic.
#[test]
fn mutated_shards_fail_cleanly() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path());
    let path = tmp.path().join(SHARD);
    let original = std::fs::read(&path).unwrap();
    let header_end = 8 + u64::from_le_bytes(original[..8].try_into().unwrap()) as usize;
    let mut positions: Vec<usize> = (0..header_end).collect();
    positions.extend((header_end..original.len()).step_by(97));
    for at in positions {
        let mut bytes = original.clone();
        bytes[at] ^= 0x5a;
        std::fs::write(&path, &bytes).unwrap();
        match read_all(tmp.path(), Order::Window, Verify::OnRead) {
            Ok(n) => assert_eq!(n, 200),
            Err(e) => assert!(e.contains(SHARD), "flip at {at}: {e}"),
        }
    }
    for len in (0..original.len()).step_by(61) {
        std::fs::write(&path, &original[..len]).unwrap();
        let err = read_all(tmp.path(), Order::Window, Verify::OnRead).unwrap_err();
        assert!(err.contains(SHARD), "truncated to {len}: {err}");
    }
}

/// A shard truncated after the stream opened it, small (within one page) or large: the
/// reads past the new end are an error naming the shard.
#[test]
fn a_shard_truncated_mid_epoch_is_an_error_not_a_crash() {
    for samples_per_shard in [40u32, 4000] {
        truncate_while_streaming(samples_per_shard);
    }
}

fn truncate_while_streaming(per_shard: u32) {
    let tmp = tempfile::tempdir().unwrap();
    let mut w = DatasetWriter::create(
        tmp.path(),
        schema(),
        WriterOptions {
            shard_bytes: per_shard as u64 * 24,
            ..WriterOptions::default()
        },
    )
    .unwrap();
    for i in 0..2 * per_shard {
        let x: Vec<u8> = (0..4)
            .flat_map(|k| (i as f32 + k as f32).to_le_bytes())
            .collect();
        w.push_sample(&[&x, &(i as i64).to_le_bytes()]).unwrap();
    }
    w.finish().unwrap();
    let ds = Dataset::open(tmp.path()).unwrap();
    let mut o = StreamOptions::new(
        OrderSpec {
            order: Order::Sequential,
            window: 8,
            spread: 1,
        },
        0,
        0,
        4,
    );
    o.verify = Verify::Off;
    let mut stream = ds.stream(o).unwrap();
    assert_eq!(stream.next().unwrap().unwrap().samples, 4);
    OpenOptions::new()
        .write(true)
        .open(tmp.path().join("shard-000000.safetensors"))
        .unwrap()
        .set_len(300)
        .unwrap();
    let err = stream.find_map(Result::err).expect("an error").to_string();
    assert!(
        err.contains("shard-000000.safetensors") && err.contains("truncated"),
        "{per_shard}: {err}"
    );
}

/// Every rank's stream notices damage in the shards it reads, also those it reads only in
/// part (rank edges; every shard under `full` order).
#[test]
fn damage_is_caught_by_every_rank() {
    let tmp = tempfile::tempdir().unwrap();
    write(tmp.path());
    let path = tmp.path().join(SHARD);
    let mut bytes = std::fs::read(&path).unwrap();
    let at = bytes.len() - 100;
    bytes[at] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    let ds = Dataset::open(tmp.path()).unwrap();
    for order in Order::ALL {
        for ranks in [2u64, 4] {
            let mut caught = 0;
            for rank in 0..ranks {
                let mut o = StreamOptions::new(
                    OrderSpec {
                        order,
                        window: 16,
                        spread: 2,
                    },
                    3,
                    0,
                    8,
                );
                o.rank = rank;
                o.ranks = ranks;
                let reads_it =
                    ds.plan(o.spec, 3, 0)
                        .materialize()
                        .iter()
                        .enumerate()
                        .any(|(pos, s)| {
                            let (a, b) = frugal_store::rank_range(200, rank, ranks);
                            s.shard == 2 && (a..b).contains(&(pos as u64))
                        });
                let result: Result<Vec<_>, _> = ds.stream(o).unwrap().collect();
                match result {
                    Err(e) => {
                        assert!(e.to_string().contains(SHARD), "{e}");
                        caught += 1;
                    }
                    Ok(_) => assert!(
                        !reads_it,
                        "{order} rank {rank}/{ranks} read the damage unnoticed"
                    ),
                }
            }
            assert!(caught >= 1, "{order} with {ranks} ranks");
        }
    }
}
