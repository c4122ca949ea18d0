//! Importers: `.npy`/`.npz` written byte by byte here, the MNIST files in shared/data,
//! and (with the `hdf5` feature) a chunked, compressed HDF5 file written by h5py.

#![allow(clippy::print_stderr)]

mod common;

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use frugal_store::import::{RawColumn, import_mnist, import_npy, import_npz, import_raw};
use frugal_store::{
    Column, DType, Dataset, MANIFEST_FILE, Order, OrderSpec, StoreError, StreamOptions,
    WriterOptions,
};

/// Every column of the dataset in `dir`, read back in order, as raw little-endian bytes.
fn read_columns(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let ds = Dataset::open(dir).unwrap();
    let spec = OrderSpec {
        order: Order::Sequential,
        window: 1024,
        spread: 1,
    };
    let mut out: BTreeMap<String, Vec<u8>> = ds
        .manifest()
        .schema
        .columns
        .iter()
        .map(|c| (c.name.clone(), Vec::new()))
        .collect();
    for batch in ds.stream(StreamOptions::new(spec, 0, 0, 300)).unwrap() {
        for c in batch.unwrap().columns {
            out.get_mut(&c.name).unwrap().extend_from_slice(c.bytes());
        }
    }
    out
}

/// An `.npy` file as numpy writes it: the header padded with spaces to a multiple of 64
/// bytes and ended with a newline.
fn npy(version: u8, descr: &str, shape: &[usize], data: &[u8]) -> Vec<u8> {
    let dims: Vec<String> = shape.iter().map(usize::to_string).collect();
    let shape = match dims.len() {
        1 => format!("({},)", dims[0]),
        _ => format!("({})", dims.join(", ")),
    };
    npy_raw(
        version,
        format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}"),
        data,
    )
}

/// An `.npy` file with the header dict `dict`, padded as numpy pads it.
fn npy_raw(version: u8, mut dict: String, data: &[u8]) -> Vec<u8> {
    let prefix = if version == 1 { 10 } else { 12 };
    while !(prefix + dict.len() + 1).is_multiple_of(64) {
        dict.push(' ');
    }
    dict.push('\n');
    let mut out = b"\x93NUMPY".to_vec();
    out.extend([version, 0]);
    if version == 1 {
        out.extend((dict.len() as u16).to_le_bytes());
    } else {
        out.extend((dict.len() as u32).to_le_bytes());
    }
    out.extend(dict.as_bytes());
    out.extend(data);
    out
}

fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path
}

fn small_shards() -> WriterOptions {
    WriterOptions {
        shard_bytes: 4096,
        ..WriterOptions::default()
    }
}

fn import_message(err: StoreError) -> (PathBuf, String) {
    match err {
        StoreError::Import { path, message } => (path, message),
        other => panic!("expected an import error, got {other:?}"),
    }
}

/// An array of the round-trip tests: (column, file bytes, dtype, sample shape, the
/// little-endian bytes the store should hold).
type Array = (&'static str, Vec<u8>, DType, Vec<usize>, Vec<u8>);

fn arrays(n: usize) -> Vec<Array> {
    let f32s: Vec<f32> = (0..n * 6).map(|i| i as f32 * 0.25 - 3.0).collect();
    let f32_le: Vec<u8> = f32s.iter().flat_map(|v| v.to_le_bytes()).collect();
    let i64s: Vec<i64> = (0..n as i64).map(|i| i * 1_000_000_007 - 5).collect();
    let i64_be: Vec<u8> = i64s.iter().flat_map(|v| v.to_be_bytes()).collect();
    let i64_le: Vec<u8> = i64s.iter().flat_map(|v| v.to_le_bytes()).collect();
    let u16s: Vec<u16> = (0..n * 4).map(|i| (i * 7919) as u16).collect();
    let u16_be: Vec<u8> = u16s.iter().flat_map(|v| v.to_be_bytes()).collect();
    let u16_le: Vec<u8> = u16s.iter().flat_map(|v| v.to_le_bytes()).collect();
    let f64s: Vec<f64> = (0..n).map(|i| (i as f64).sqrt()).collect();
    let f64_be: Vec<u8> = f64s.iter().flat_map(|v| v.to_be_bytes()).collect();
    let f64_le: Vec<u8> = f64s.iter().flat_map(|v| v.to_le_bytes()).collect();
    let bools: Vec<u8> = (0..n).map(|i| u8::from(i % 3 == 0)).collect();
    let i8s: Vec<u8> = (0..n * 2)
        .map(|i| (i as i8).wrapping_mul(3) as u8)
        .collect();
    let halves: Vec<u8> = (0..n)
        .flat_map(|i| (0x3c00u16 + i as u16).to_le_bytes())
        .collect();
    let u32_be: Vec<u8> = (0..n as u32)
        .flat_map(|v| (v ^ 0xdead_beef).to_be_bytes())
        .collect();
    let u32_le: Vec<u8> = (0..n as u32)
        .flat_map(|v| (v ^ 0xdead_beef).to_le_bytes())
        .collect();
    vec![
        (
            "x",
            npy(1, "<f4", &[n, 2, 3], &f32_le),
            DType::F32,
            vec![2, 3],
            f32_le,
        ),
        (
            "id",
            npy(1, ">i8", &[n], &i64_be),
            DType::I64,
            vec![],
            i64_le,
        ),
        (
            "u",
            npy(2, ">u2", &[n, 4], &u16_be),
            DType::U16,
            vec![4],
            u16_le,
        ),
        (
            "r",
            npy(3, ">f8", &[n], &f64_be),
            DType::F64,
            vec![],
            f64_le,
        ),
        (
            "flag",
            npy(1, "|b1", &[n], &bools),
            DType::Bool,
            vec![],
            bools,
        ),
        (
            "small",
            npy(1, "|i1", &[n, 2], &i8s),
            DType::I8,
            vec![2],
            i8s,
        ),
        (
            "h",
            npy(2, "<f2", &[n], &halves),
            DType::F16,
            vec![],
            halves,
        ),
        (
            "w",
            npy(1, ">u4", &[n, 1], &u32_be),
            DType::U32,
            vec![1],
            u32_le,
        ),
    ]
}

#[test]
fn npy_round_trips_dtypes_byte_orders_and_shapes() {
    let tmp = tempfile::tempdir().unwrap();
    let n = 777;
    let arrays = arrays(n);
    let inputs: Vec<(String, PathBuf)> = arrays
        .iter()
        .map(|(name, bytes, ..)| {
            (
                name.to_string(),
                write_file(tmp.path(), &format!("{name}.npy"), bytes),
            )
        })
        .collect();
    let out = tmp.path().join("ds");
    let manifest = import_npy(&inputs, &out, small_shards()).unwrap();
    assert!(manifest.complete);
    assert_eq!(manifest.samples, n as u64);
    assert!(manifest.shards.len() > 1, "small shards split the data");
    let expected: Vec<Column> = arrays
        .iter()
        .map(|(name, _, dtype, shape, _)| Column::new(*name, *dtype, shape.clone()))
        .collect();
    assert_eq!(manifest.schema.columns, expected);
    let source = &manifest.metadata["source"];
    assert_eq!(source["format"], "npy");
    assert!(source["files"]["x"].as_str().unwrap().ends_with("x.npy"));

    let got = read_columns(&out);
    for (name, _, _, _, le) in &arrays {
        assert_eq!(&got[*name], le, "column {name}");
    }
    // Typed access sees the values, not just the bytes.
    let ds = Dataset::open(&out).unwrap();
    let spec = OrderSpec {
        order: Order::Sequential,
        window: 1024,
        spread: 1,
    };
    let batch = ds
        .stream(StreamOptions::new(spec, 0, 0, 4))
        .unwrap()
        .next()
        .unwrap()
        .unwrap();
    assert_eq!(
        batch.column("id").unwrap().as_slice::<i64>().unwrap(),
        &[-5, 1_000_000_002, 2_000_000_009, 3_000_000_016]
    );
    assert_eq!(
        &batch.column("x").unwrap().as_slice::<f32>().unwrap()[..3],
        &[-3.0, -2.75, -2.5]
    );
}

/// `np.save` of a transposed array writes it in Fortran order: the first axis fastest.
/// Such files import as the row-major array they represent, block by block.
#[test]
fn fortran_order_npy_imports_as_its_rows() {
    let tmp = tempfile::tempdir().unwrap();
    // Rank 3, f32, more rows than one read block holds (8 MiB / 48 bytes per row).
    let (n, d1, d2) = (200_000usize, 3usize, 4usize);
    let value = |i: usize, a: usize, b: usize| (i * 12 + a * 4 + b) as f32 * 0.5;
    let mut fortran = Vec::with_capacity(n * d1 * d2 * 4);
    for b in 0..d2 {
        for a in 0..d1 {
            for i in 0..n {
                fortran.extend(value(i, a, b).to_le_bytes());
            }
        }
    }
    let mut rows = Vec::with_capacity(fortran.len());
    for i in 0..n {
        for a in 0..d1 {
            for b in 0..d2 {
                rows.extend(value(i, a, b).to_le_bytes());
            }
        }
    }
    let x = write_file(
        tmp.path(),
        "x.npy",
        &npy_raw(
            1,
            format!("{{'descr': '<f4', 'fortran_order': True, 'shape': ({n}, {d1}, {d2}), }}"),
            &fortran,
        ),
    );
    // Rank 2, big-endian i16: byte order and layout both converted.
    let labels: Vec<i16> = (0..n * 2).map(|k| (k % 30_000) as i16 - 15_000).collect();
    let mut be = Vec::new();
    for col in 0..2 {
        for i in 0..n {
            be.extend(labels[i * 2 + col].to_be_bytes());
        }
    }
    let y = write_file(
        tmp.path(),
        "y.npy",
        &npy_raw(
            1,
            format!("{{'descr': '>i2', 'fortran_order': True, 'shape': ({n}, 2), }}"),
            &be,
        ),
    );
    let out = tmp.path().join("ds");
    let m = import_npy(
        &[("x".into(), x), ("y".into(), y)],
        &out,
        WriterOptions::default(),
    )
    .unwrap();
    assert_eq!(m.samples, n as u64);
    assert_eq!(m.schema.columns[0], Column::new("x", DType::F32, [d1, d2]));
    let got = read_columns(&out);
    assert!(got["x"] == rows, "x differs from the row-major array");
    let le: Vec<u8> = labels.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(got["y"] == le, "y differs");

    // In an .npz a member is a stream: refused with what to do.
    let archive = tmp.path().join("a.npz");
    let member = npy_raw(
        1,
        "{'descr': '<i4', 'fortran_order': True, 'shape': (6, 2), }".into(),
        &[7; 48],
    );
    write_npz(
        &archive,
        &[("m.npy", &member)],
        zip::CompressionMethod::Deflated,
    );
    let (_, message) =
        import_message(import_npz(&archive, &tmp.path().join("z"), small_shards()).unwrap_err());
    assert!(
        message.contains("Fortran") && message.contains("ascontiguousarray"),
        "{message}"
    );
}

/// The layout seed-001's Fortran trainer reads: `images.T.astype(np.float32).tofile()`
/// (features × samples, the sample index fastest) and `labels.astype(np.int32).tofile()`.
/// A column-major `.bin` imports to the same shards as the Fortran-order `.npy` of the same
/// array, and a row-major `.bin` to those of the C-order `.npy`.
#[test]
fn raw_files_import_as_the_npy_of_the_same_array() {
    let tmp = tempfile::tempdir().unwrap();
    // More samples than one read block holds (8 MiB / 48 bytes), so blocks join up.
    let (n, d1, d2) = (190_000usize, 3usize, 4usize);
    let value = |i: usize, a: usize, b: usize| ((i * 12 + a * 4 + b) % 100_003) as f32 - 7.5;
    let mut fortran = Vec::with_capacity(n * d1 * d2 * 4);
    for b in 0..d2 {
        for a in 0..d1 {
            for i in 0..n {
                fortran.extend(value(i, a, b).to_le_bytes());
            }
        }
    }
    let mut c_order = Vec::with_capacity(fortran.len());
    for i in 0..n {
        for a in 0..d1 {
            for b in 0..d2 {
                c_order.extend(value(i, a, b).to_le_bytes());
            }
        }
    }
    let labels: Vec<u8> = (0..n as i32)
        .flat_map(|i| (i % 10 - 3).to_le_bytes())
        .collect();
    let header = |order: bool| {
        format!(
            "{{'descr': '<f4', 'fortran_order': {}, 'shape': ({n}, {d1}, {d2}), }}",
            if order { "True" } else { "False" }
        )
    };
    let f_npy = write_file(tmp.path(), "f.npy", &npy_raw(1, header(true), &fortran));
    let c_npy = write_file(tmp.path(), "c.npy", &npy_raw(1, header(false), &c_order));
    let y_npy = write_file(tmp.path(), "y.npy", &npy(1, "<i4", &[n], &labels));
    let f_bin = write_file(tmp.path(), "images.bin", &fortran);
    let c_bin = write_file(tmp.path(), "rows.bin", &c_order);
    let y_bin = write_file(tmp.path(), "labels.bin", &labels);
    let raw = |x: &Path, order: &str| -> Vec<RawColumn> {
        [
            format!("x={}:f32:{d1}x{d2}:{order}", x.display()),
            format!("y={}:i32", y_bin.display()),
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect()
    };
    let shards = || WriterOptions {
        shard_bytes: 1 << 20,
        ..WriterOptions::default()
    };
    for (name, bin, npy_file, order) in [
        ("column", &f_bin, &f_npy, "column-major"),
        ("row", &c_bin, &c_npy, "row-major"),
    ] {
        let from_raw = tmp.path().join(format!("{name}-raw"));
        let from_npy = tmp.path().join(format!("{name}-npy"));
        let m = import_raw(&raw(bin, order), &from_raw, shards()).unwrap();
        assert_eq!(m.samples, n as u64);
        assert_eq!(m.schema.columns[0], Column::new("x", DType::F32, [d1, d2]));
        assert_eq!(m.metadata["source"]["format"], "raw");
        assert_eq!(m.metadata["source"]["columns"]["x"]["order"], order);
        import_npy(
            &[("x".into(), npy_file.clone()), ("y".into(), y_npy.clone())],
            &from_npy,
            shards(),
        )
        .unwrap();
        let (a, b) = (dataset_bytes(&from_raw), dataset_bytes(&from_npy));
        assert!(a.0.len() > 4 && a.0 == b.0, "{name}-major: shards differ");
        assert_eq!(a.1["shards"], b.1["shards"]);
        assert!(
            read_columns(&from_raw)["x"] == c_order,
            "{name}-major: not the C-order array"
        );
    }

    // Big-endian column-major u16, 2-D.
    let words: Vec<u16> = (0..n * 2).map(|k| (k * 7919 % 65_521) as u16).collect();
    let mut be = Vec::new();
    for col in 0..2 {
        for i in 0..n {
            be.extend(words[i * 2 + col].to_be_bytes());
        }
    }
    let w = write_file(tmp.path(), "w.bin", &be);
    let spec: RawColumn = format!("w={}:u16:2:column-major:be", w.display())
        .parse()
        .unwrap();
    import_raw(&[spec], &tmp.path().join("be"), shards()).unwrap();
    let le: Vec<u8> = words.iter().flat_map(|v| v.to_le_bytes()).collect();
    assert!(read_columns(&tmp.path().join("be"))["w"] == le);

    // A layout that does not fit the file, and files of different lengths, name the file.
    let wrong: RawColumn = format!("x={}:f32:7", f_bin.display()).parse().unwrap();
    let (path, message) =
        import_message(import_raw(&[wrong], &tmp.path().join("no"), shards()).unwrap_err());
    assert_eq!(path, f_bin);
    assert!(
        message.contains("28-byte samples") && message.contains("column `x`"),
        "{message}"
    );
    let short = write_file(tmp.path(), "short.bin", &labels[..400]);
    let specs: Vec<RawColumn> = [
        format!("x={}:f32:12:column-major", f_bin.display()),
        format!("y={}:i32", short.display()),
    ]
    .iter()
    .map(|s| s.parse().unwrap())
    .collect();
    let err = import_raw(&specs, &tmp.path().join("no"), shards())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("short.bin") && err.contains("100 rows") && err.contains("190000"),
        "{err}"
    );
    assert!(
        !tmp.path().join("no").exists(),
        "a refused import left a directory"
    );

    // Killed part-way, a raw import resumes to the uninterrupted bytes.
    let resume = tmp.path().join("resume");
    std::fs::create_dir(&resume).unwrap();
    resumes_exactly(&resume, |out| {
        import_raw(&raw(&f_bin, "column-major"), out, shards())
    });
}

#[test]
fn npy_streams_many_blocks() {
    // 10 MiB of one column is more than one 8 MiB block.
    let tmp = tempfile::tempdir().unwrap();
    let n = 2600;
    let wide: Vec<u8> = (0..n * 1024)
        .flat_map(|i| ((i as u32).wrapping_mul(2_654_435_761) as f32).to_be_bytes())
        .collect();
    let labels: Vec<u8> = (0..n).map(|i| (i % 251) as u8).collect();
    let inputs = vec![
        (
            "wide".to_string(),
            write_file(tmp.path(), "wide.npy", &npy(1, ">f4", &[n, 32, 32], &wide)),
        ),
        (
            "label".to_string(),
            write_file(tmp.path(), "label.npy", &npy(1, "|u1", &[n], &labels)),
        ),
    ];
    let out = tmp.path().join("ds");
    let manifest = import_npy(&inputs, &out, WriterOptions::default()).unwrap();
    assert_eq!(manifest.samples, n as u64);
    let got = read_columns(&out);
    let wide_le: Vec<u8> = wide
        .chunks_exact(4)
        .flat_map(|c| [c[3], c[2], c[1], c[0]])
        .collect();
    assert!(got["wide"] == wide_le);
    assert_eq!(got["label"], labels);
}

fn write_npz(path: &Path, members: &[(&str, &[u8])], method: zip::CompressionMethod) {
    let mut zip = zip::ZipWriter::new(std::fs::File::create(path).unwrap());
    let options = zip::write::SimpleFileOptions::default().compression_method(method);
    for (name, bytes) in members {
        zip.start_file(*name, options).unwrap();
        zip.write_all(bytes).unwrap();
    }
    zip.finish().unwrap();
}

#[test]
fn npz_stored_and_deflated() {
    let n = 500;
    let arrays = arrays(n);
    let members: Vec<(String, &[u8])> = arrays
        .iter()
        .map(|(name, bytes, ..)| (format!("{name}.npy"), bytes.as_slice()))
        .collect();
    let members: Vec<(&str, &[u8])> = members.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    for method in [
        zip::CompressionMethod::Stored,
        zip::CompressionMethod::Deflated,
    ] {
        let tmp = tempfile::tempdir().unwrap();
        let path = tmp.path().join("arrays.npz");
        write_npz(&path, &members, method);
        let out = tmp.path().join("ds");
        let manifest = import_npz(&path, &out, small_shards()).unwrap();
        assert_eq!(manifest.samples, n as u64);
        let names: Vec<&str> = manifest
            .schema
            .columns
            .iter()
            .map(|c| c.name.as_str())
            .collect();
        let expected: Vec<&str> = arrays.iter().map(|a| a.0).collect();
        assert_eq!(names, expected, "columns in archive order, named by key");
        assert_eq!(manifest.metadata["source"]["format"], "npz");
        let got = read_columns(&out);
        for (name, _, _, _, le) in &arrays {
            assert_eq!(&got[*name], le, "{method:?}: column {name}");
        }
    }
}

#[test]
fn npz_faults_name_the_member() {
    let tmp = tempfile::tempdir().unwrap();
    let a = npy(1, "<f4", &[4], &[0; 16]);
    let b = npy(1, "<f4", &[5], &[0; 20]);
    let path = tmp.path().join("bad.npz");
    write_npz(
        &path,
        &[("a.npy", &a), ("b.npy", &b)],
        zip::CompressionMethod::Deflated,
    );
    let (p, message) =
        import_message(import_npz(&path, &tmp.path().join("o1"), small_shards()).unwrap_err());
    assert_eq!(p, path);
    assert!(
        message.contains("b.npy") && message.contains("a.npy"),
        "{message}"
    );
    assert!(message.contains('5') && message.contains('4'), "{message}");
    assert!(
        !tmp.path().join("o1").exists(),
        "nothing is written for a bad input"
    );

    write_npz(
        &path,
        &[("a.npy", &a[..a.len() - 3])],
        zip::CompressionMethod::Stored,
    );
    let (_, message) =
        import_message(import_npz(&path, &tmp.path().join("o2"), small_shards()).unwrap_err());
    assert!(
        message.contains("a.npy") && message.contains("bytes"),
        "{message}"
    );

    write_npz(
        &path,
        &[("notes.txt", b"hello")],
        zip::CompressionMethod::Stored,
    );
    let (_, message) =
        import_message(import_npz(&path, &tmp.path().join("o3"), small_shards()).unwrap_err());
    assert!(message.contains("notes.txt"), "{message}");

    std::fs::write(&path, b"PK\x03\x04 not really").unwrap();
    let (_, message) =
        import_message(import_npz(&path, &tmp.path().join("o4"), small_shards()).unwrap_err());
    assert!(message.contains("zip"), "{message}");

    // A corrupt deflated stream is caught while streaming (decoder or CRC).
    let data: Vec<u8> = (0..4000u32).flat_map(|v| (v * v).to_le_bytes()).collect();
    let big = npy(1, "<u4", &[4000], &data);
    write_npz(&path, &[("c.npy", &big)], zip::CompressionMethod::Deflated);
    let mut bytes = std::fs::read(&path).unwrap();
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x55;
    bytes[middle + 1] ^= 0xaa;
    std::fs::write(&path, &bytes).unwrap();
    let err = import_npz(&path, &tmp.path().join("o5"), small_shards()).unwrap_err();
    let (_, message) = import_message(err);
    assert!(message.contains("c.npy"), "{message}");
}

#[test]
fn mismatched_lengths_name_files_and_lengths() {
    let tmp = tempfile::tempdir().unwrap();
    let a = write_file(tmp.path(), "a.npy", &npy(1, "<f4", &[10, 2], &[0; 80]));
    let b = write_file(tmp.path(), "b.npy", &npy(1, "|u1", &[12], &[0; 12]));
    let out = tmp.path().join("ds");
    let err = import_npy(
        &[("a".into(), a.clone()), ("b".into(), b.clone())],
        &out,
        small_shards(),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.contains("a.npy") && text.contains("b.npy"), "{text}");
    assert!(text.contains("10") && text.contains("12"), "{text}");
    assert!(!out.join(MANIFEST_FILE).exists());
}

#[test]
fn malformed_npy_files_are_refused_with_reasons() {
    let tmp = tempfile::tempdir().unwrap();
    let good = npy(1, "<i4", &[6, 2], &[7; 48]);
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "truncated-data.npy",
            good[..good.len() - 5].to_vec(),
            "truncated",
        ),
        ("truncated-header.npy", good[..30].to_vec(), "truncated"),
        ("tiny.npy", b"\x93NU".to_vec(), "truncated"),
        ("trailing.npy", [good.clone(), vec![0; 3]].concat(), "after"),
        (
            "not-npy.npy",
            b"PK\x03\x04 some zip".to_vec(),
            "not an .npy",
        ),
        (
            "version.npy",
            [b"\x93NUMPY\x04\x00".as_slice(), &good[8..]].concat(),
            "version 4.0",
        ),
        ("object.npy", npy(1, "|O", &[2], &[0; 16]), "object"),
        ("strings.npy", npy(1, "<U3", &[2], &[0; 24]), "string"),
        ("complex.npy", npy(1, "<c8", &[2], &[0; 16]), "complex"),
        (
            "structured.npy",
            npy_raw(
                1,
                "{'descr': [('a', '<i4'), ('b', '<f8')], 'fortran_order': False, 'shape': (6,), }"
                    .into(),
                &[7; 72],
            ),
            "structured",
        ),
        (
            "extra-key.npy",
            npy_raw(
                1,
                "{'descr': '<i4', 'fortran_order': False, 'shape': (6,), 'x': 1}".into(),
                &[7; 24],
            ),
            "unexpected key 'x'",
        ),
        (
            "not-utf8.npy",
            npy_raw(
                3,
                "{'descr': '<i4', 'fortran_order': False, 'shape': (6,), }".into(),
                &[7; 24],
            )
            .into_iter()
            .map(|b| if b == b'd' { 0xff } else { b })
            .collect(),
            "UTF-8",
        ),
        ("scalar.npy", npy(1, "<f8", &[], &[0; 8]), "0-d"),
        ("zero-axis.npy", npy(1, "<f8", &[3, 0], &[]), "zero-length"),
        (
            "bool.npy",
            npy(1, "|b1", &[3], &[0, 1, 2]),
            "neither 0 nor 1",
        ),
        (
            "absurd-header.npy",
            [b"\x93NUMPY\x02\x00\xff\xff\xff\xff".as_slice(), &[b' '; 64]].concat(),
            "damaged",
        ),
        (
            "huge-header.npy",
            {
                let mut b = good.clone();
                b[8] = 0xff;
                b[9] = 0xff;
                b
            },
            "truncated",
        ),
    ];
    for (name, bytes, expect) in cases {
        let path = write_file(tmp.path(), name, &bytes);
        let out = tmp.path().join(format!("out-{name}"));
        let err = import_npy(&[("c".into(), path.clone())], &out, small_shards()).unwrap_err();
        let (p, message) = import_message(err);
        assert_eq!(p, path, "{name}");
        assert!(message.contains(expect), "{name}: {message}");
    }
    let missing = tmp.path().join("missing.npy");
    let err = import_npy(
        &[("c".into(), missing)],
        &tmp.path().join("o"),
        small_shards(),
    )
    .unwrap_err();
    assert!(matches!(err, StoreError::Io { .. }), "{err:?}");
    assert!(import_npy(&[], &tmp.path().join("o"), small_shards()).is_err());
}

fn mnist_dir() -> Option<PathBuf> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data/mnist");
    if dir.join("train-images-idx3-ubyte.gz").exists() {
        Some(dir)
    } else {
        eprintln!("skipping: no MNIST files in {}", dir.display());
        None
    }
}

fn gunzip(path: &Path) -> Vec<u8> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(std::fs::File::open(path).unwrap())
        .read_to_end(&mut out)
        .unwrap();
    out
}

/// IDX files of `n` 28×28 images and their labels, gzipped, with pixel values drawn from
/// `seed`.
fn idx_gz(n: usize, seed: u64) -> (Vec<u8>, Vec<u8>) {
    let mut state = seed;
    let mut next = || {
        state = state
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1);
        // Low-entropy pixels: a compressible stream, like real images.
        ((state >> 60) as u8) * 16
    };
    let mut images = vec![0, 0, 8, 3];
    for d in [n as u32, 28, 28] {
        images.extend(d.to_be_bytes());
    }
    images.extend((0..n * 784).map(|_| next()));
    let mut labels = vec![0, 0, 8, 1];
    labels.extend((n as u32).to_be_bytes());
    labels.extend((0..n).map(|i| (i % 10) as u8));
    let gz = |raw: &[u8]| {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(raw).unwrap();
        e.finish().unwrap()
    };
    (gz(&images), gz(&labels))
}

/// Every shard file and the manifest's shards, for comparing two datasets byte for byte.
fn dataset_bytes(dir: &Path) -> (Vec<Vec<u8>>, serde_json::Value) {
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("manifest.json")).unwrap()).unwrap();
    let shards = m["shards"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| std::fs::read(dir.join(s["file"].as_str().unwrap())).unwrap())
        .collect();
    (shards, m)
}

/// An import cut short by a truncated input, run again with the whole input, gives the
/// dataset an uninterrupted import gives, byte for byte: the rows already written are
/// checked against the input, not appended again. Another input is refused.
#[test]
fn a_truncated_import_resumes_to_the_uninterrupted_dataset() {
    // Three read blocks of images, so a cut input has written whole blocks first.
    const N: usize = 32_000;
    let shards = || WriterOptions {
        shard_bytes: 256 << 10,
        ..WriterOptions::default()
    };
    let tmp = tempfile::tempdir().unwrap();
    let (images, labels) = idx_gz(N, 7);
    let labels_path = write_file(tmp.path(), "labels.gz", &labels);
    let whole = tmp.path().join("whole");
    let images_path = write_file(tmp.path(), "images.gz", &images);
    import_mnist(&images_path, &labels_path, &whole, shards()).unwrap();
    let expected = dataset_bytes(&whole);
    assert_eq!(expected.1["samples"], N);

    for (k, cut) in [0.45, 0.7, 0.95].into_iter().enumerate() {
        let out = tmp.path().join(format!("cut-{k}"));
        write_file(
            tmp.path(),
            "images.gz",
            &images[..(images.len() as f64 * cut) as usize],
        );
        assert!(import_mnist(&images_path, &labels_path, &out, shards()).is_err());
        let partial: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(partial["complete"], false);
        assert!(
            partial["samples"].as_u64().unwrap() > 0,
            "cut {cut}: {partial}"
        );

        // Other images of the same shape: refused, and the dataset left as it was.
        let (other, _) = idx_gz(N, 8);
        let other_path = write_file(tmp.path(), "other.gz", &other);
        let err = import_mnist(&other_path, &labels_path, &out, shards()).unwrap_err();
        assert!(
            matches!(&err, StoreError::Directory { problem, .. } if problem.contains("other input")),
            "{err}"
        );
        let after: serde_json::Value =
            serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
        assert_eq!(after["shards"], partial["shards"]);

        // The whole input, at the path the import began with: the uninterrupted dataset.
        write_file(tmp.path(), "images.gz", &images);
        import_mnist(&images_path, &labels_path, &out, shards()).unwrap();
        let got = dataset_bytes(&out);
        assert!(got.0 == expected.0, "cut {cut}: shard bytes differ");
        assert_eq!(got.1["shards"], expected.1["shards"]);
        assert_eq!(got.1["samples"], N);
    }

    // An input shorter than what was written is refused at its end.
    let out = tmp.path().join("short");
    write_file(tmp.path(), "images.gz", &images[..images.len() / 2]);
    assert!(import_mnist(&images_path, &labels_path, &out, shards()).is_err());
    let (few_images, few_labels) = idx_gz(100, 7);
    let few_i = write_file(tmp.path(), "few-images.gz", &few_images);
    let few_l = write_file(tmp.path(), "few-labels.gz", &few_labels);
    let err = import_mnist(&few_i, &few_l, &out, shards()).unwrap_err();
    assert!(err.to_string().contains("only 100"), "{err}");
}

/// Leaves `dir` as an import killed after its first `shards` shards leaves it: the
/// manifest unfinished and listing only those, the later shard files gone.
fn cut_after(dir: &Path, shards: usize) {
    let path = dir.join("manifest.json");
    let mut m: serde_json::Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    let all = m["shards"].as_array().unwrap().clone();
    for s in &all[shards..] {
        std::fs::remove_file(dir.join(s["file"].as_str().unwrap())).unwrap();
    }
    let kept = &all[..shards];
    m["samples"] = kept
        .iter()
        .map(|s| s["samples"].as_u64().unwrap())
        .sum::<u64>()
        .into();
    m["shards"] = kept.to_vec().into();
    m["complete"] = false.into();
    std::fs::write(&path, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
}

/// Runs `import` into a fresh directory, then again into copies cut after several
/// numbers of shards: every resumed import ends with the uninterrupted one's bytes.
fn resumes_exactly(
    tmp: &Path,
    import: impl Fn(&Path) -> frugal_store::Result<frugal_store::Manifest>,
) {
    let whole = tmp.join("whole");
    let shards = import(&whole).unwrap().shards.len();
    assert!(shards >= 4, "{shards} shards");
    let expected = dataset_bytes(&whole);
    for cut in [1, shards / 2, shards - 1] {
        let out = tmp.join(format!("cut-{cut}"));
        import(&out).unwrap();
        cut_after(&out, cut);
        import(&out).unwrap();
        let got = dataset_bytes(&out);
        assert!(got.0 == expected.0, "cut after {cut}: shard bytes differ");
        assert_eq!(got.1, expected.1, "cut after {cut}");
    }
}

#[test]
fn npy_and_npz_imports_resume_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    let arrays = arrays(2000);
    let files: Vec<(String, PathBuf)> = arrays
        .iter()
        .map(|(name, bytes, ..)| {
            (
                name.to_string(),
                write_file(tmp.path(), &format!("{name}.npy"), bytes),
            )
        })
        .collect();
    let npy = tmp.path().join("npy");
    std::fs::create_dir(&npy).unwrap();
    resumes_exactly(&npy, |out| import_npy(&files, out, small_shards()));

    let members: Vec<(String, &[u8])> = arrays
        .iter()
        .map(|(name, bytes, ..)| (format!("{name}.npy"), bytes.as_slice()))
        .collect();
    let members: Vec<(&str, &[u8])> = members.iter().map(|(n, b)| (n.as_str(), *b)).collect();
    let archive = tmp.path().join("arrays.npz");
    write_npz(&archive, &members, zip::CompressionMethod::Deflated);
    let npz = tmp.path().join("npz");
    std::fs::create_dir(&npz).unwrap();
    resumes_exactly(&npz, |out| import_npz(&archive, out, small_shards()));

    // Other arrays of the same shapes into a cut dataset: refused, nothing changed.
    let out = npz.join("cut-1");
    cut_after(&out, 1);
    let before = dataset_bytes(&out);
    let other: Vec<(String, PathBuf)> = arrays
        .iter()
        .map(|(name, bytes, .., le)| {
            // A bit of the first row differs: the first shard no longer matches.
            let mut b = bytes.clone();
            let data = b.len() - le.len();
            b[data] ^= 1;
            (
                name.to_string(),
                write_file(tmp.path(), &format!("other-{name}.npy"), &b),
            )
        })
        .collect();
    let err = import_npy(&other, &out, small_shards()).unwrap_err();
    assert!(matches!(err, StoreError::Directory { .. }), "{err}");
    assert!(dataset_bytes(&out) == before);
}

#[test]
fn mnist_train_matches_a_direct_decode() {
    let Some(dir) = mnist_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = dir.join("train-images-idx3-ubyte.gz");
    let labels = dir.join("train-labels-idx1-ubyte.gz");
    let out = tmp.path().join("mnist");
    let manifest = import_mnist(&images, &labels, &out, WriterOptions::default()).unwrap();
    assert_eq!(manifest.samples, 60_000);
    assert_eq!(
        manifest.schema.columns,
        vec![
            Column::new("image", DType::U8, [28, 28]),
            Column::new("label", DType::U8, []),
        ]
    );
    assert_eq!(manifest.metadata["source"]["format"], "idx");

    let got = read_columns(&out);
    let raw_images = gunzip(&images);
    let raw_labels = gunzip(&labels);
    assert_eq!(got["label"][0], 5, "the first training digit is a 5");
    assert!(got["label"] == raw_labels[8..]);
    assert!(got["image"] == raw_images[16..]);
}

#[test]
fn mnist_raw_files_and_faults() {
    let Some(dir) = mnist_dir() else { return };
    let tmp = tempfile::tempdir().unwrap();
    let images = write_file(
        tmp.path(),
        "images",
        &gunzip(&dir.join("t10k-images-idx3-ubyte.gz")),
    );
    let labels = write_file(
        tmp.path(),
        "labels",
        &gunzip(&dir.join("t10k-labels-idx1-ubyte.gz")),
    );
    let out = tmp.path().join("test");
    let manifest = import_mnist(&images, &labels, &out, WriterOptions::default()).unwrap();
    assert_eq!(manifest.samples, 10_000);
    let got = read_columns(&out);
    assert!(got["image"] == std::fs::read(&images).unwrap()[16..]);
    assert!(got["label"] == std::fs::read(&labels).unwrap()[8..]);

    // Counts that differ: both files named.
    let train_labels = dir.join("train-labels-idx1-ubyte.gz");
    let err = import_mnist(
        &images,
        &train_labels,
        &tmp.path().join("o1"),
        WriterOptions::default(),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("10000") && err.contains("60000"), "{err}");
    assert!(
        err.contains("images") && err.contains("train-labels"),
        "{err}"
    );

    // Swapped arguments.
    let (p, message) = import_message(
        import_mnist(
            &labels,
            &images,
            &tmp.path().join("o2"),
            WriterOptions::default(),
        )
        .unwrap_err(),
    );
    assert_eq!(p, labels);
    assert!(message.contains("holds labels"), "{message}");

    // Truncated raw and gzip files.
    let raw = std::fs::read(&images).unwrap();
    let short = write_file(tmp.path(), "short", &raw[..raw.len() - 100]);
    let (p, message) = import_message(
        import_mnist(
            &short,
            &labels,
            &tmp.path().join("o3"),
            WriterOptions::default(),
        )
        .unwrap_err(),
    );
    assert_eq!(p, short);
    assert!(message.contains("header describes"), "{message}");
    let gz = std::fs::read(dir.join("t10k-images-idx3-ubyte.gz")).unwrap();
    let short_gz = write_file(tmp.path(), "short.gz", &gz[..gz.len() / 2]);
    let (p, message) = import_message(
        import_mnist(
            &short_gz,
            &labels,
            &tmp.path().join("o4"),
            WriterOptions::default(),
        )
        .unwrap_err(),
    );
    assert_eq!(p, short_gz);
    assert!(
        message.contains("truncated") || message.contains("reading"),
        "{message}"
    );
}

#[cfg(feature = "hdf5")]
mod hdf5 {
    use super::*;
    use frugal_store::import::import_hdf5;
    use std::process::Command;

    const WRITE: &str = r#"
import sys, h5py, numpy as np
path, dump = sys.argv[1], sys.argv[2]
n = 3000
rng = np.random.default_rng(7)
arrays = {
    "wide": (rng.standard_normal((n, 32, 32)).astype("<f4"), dict(chunks=(100, 32, 32), compression="gzip", compression_opts=1)),
    "id": (np.arange(n, dtype=">i8") * 1_000_003 - 17, dict(chunks=(700,), compression="gzip", shuffle=True)),
    "half": (np.concatenate([np.array([0.0, -0.0, 6.1035e-05, 5.96e-08, 65504.0, -np.inf, np.inf], dtype="<f2"),
                             rng.standard_normal(2 * n - 7).astype("<f2")]).reshape(n, 2), dict(chunks=(256, 2), compression="gzip")),
    "flag": (rng.integers(0, 2, n).astype(bool), dict(chunks=(512,))),
    "u": (rng.integers(0, 60000, (n, 5)).astype(">u2"), dict()),
    "d": (rng.standard_normal(n).astype("<f8"), dict(chunks=(3000,), compression="gzip")),
    "b": (rng.integers(-128, 128, (n, 3)).astype("i1"), dict(chunks=(1, 3))),
}
with h5py.File(path, "w") as f:
    for name, (a, kw) in arrays.items():
        f.create_dataset("group/" + name, data=a, **kw)
    f.create_dataset("short", data=np.zeros(10, "f4"))
    f.create_dataset("text", data=np.array([b"ab"] * n))
    f.create_dataset("scalar", data=3.0)
with h5py.File(path, "r") as f:
    for name in arrays:
        a = f["group/" + name][...]
        a.astype(a.dtype.newbyteorder("<")).tofile(f"{dump}/{name}.bin")
"#;

    /// The arrays of `WRITE` in `data.h5`, and what h5py reads of them beside it.
    fn h5_file() -> (tempfile::TempDir, PathBuf) {
        let tmp = tempfile::tempdir().unwrap();
        let file = tmp.path().join("data.h5");
        let status = Command::new("python3")
            .args(["-c", WRITE])
            .arg(&file)
            .arg(tmp.path())
            .status()
            .unwrap();
        assert!(status.success());
        (tmp, file)
    }

    #[test]
    fn an_hdf5_import_resumes_exactly() {
        if !crate::common::python_ready("h5py, numpy") {
            return;
        }
        let (tmp, file) = h5_file();
        let datasets: Vec<(String, String)> = ["wide", "id", "flag"]
            .iter()
            .map(|n| (n.to_string(), format!("group/{n}")))
            .collect();
        let runs = tmp.path().join("runs");
        std::fs::create_dir(&runs).unwrap();
        let options = WriterOptions {
            shard_bytes: 256 << 10,
            ..WriterOptions::default()
        };
        resumes_exactly(&runs, |out| {
            import_hdf5(&file, &datasets, out, options.clone())
        });
    }

    #[test]
    fn hdf5_chunked_compressed_matches_h5py() {
        if !crate::common::python_ready("h5py, numpy") {
            return;
        }
        let (tmp, file) = h5_file();

        let names = ["wide", "id", "half", "flag", "u", "d", "b"];
        let datasets: Vec<(String, String)> = names
            .iter()
            .map(|n| (n.to_string(), format!("group/{n}")))
            .collect();
        let out = tmp.path().join("ds");
        let manifest = import_hdf5(&file, &datasets, &out, WriterOptions::default()).unwrap();
        assert_eq!(manifest.samples, 3000);
        assert_eq!(
            manifest.schema.columns,
            vec![
                Column::new("wide", DType::F32, [32, 32]),
                Column::new("id", DType::I64, []),
                Column::new("half", DType::F16, [2]),
                Column::new("flag", DType::Bool, []),
                Column::new("u", DType::U16, [5]),
                Column::new("d", DType::F64, []),
                Column::new("b", DType::I8, [3]),
            ]
        );
        assert_eq!(manifest.metadata["source"]["datasets"]["id"], "group/id");
        let got = read_columns(&out);
        for name in names {
            let expected = std::fs::read(tmp.path().join(format!("{name}.bin"))).unwrap();
            assert!(
                got[name] == expected,
                "column {name} differs from what h5py reads"
            );
        }
        let ids = &got["id"];
        assert_eq!(
            i64::from_le_bytes(ids[8..16].try_into().unwrap()),
            1_000_003 - 17
        );

        let faults = [
            (("x", "group/wide"), ("y", "short"), "10 rows"),
            (("x", "group/wide"), ("y", "missing"), "missing"),
            (("x", "group/wide"), ("y", "text"), "not supported"),
            (("x", "scalar"), ("y", "group/id"), "scalar"),
        ];
        for (i, (a, b, expect)) in faults.into_iter().enumerate() {
            let datasets = [
                (a.0.to_string(), a.1.to_string()),
                (b.0.to_string(), b.1.to_string()),
            ];
            let out = tmp.path().join(format!("bad{i}"));
            let err = import_hdf5(&file, &datasets, &out, WriterOptions::default()).unwrap_err();
            let (p, message) = import_message(err);
            assert_eq!(p, file);
            assert!(message.contains(expect), "{message}");
            assert!(!out.exists());
        }
        let not_h5 = write_file(tmp.path(), "not.h5", b"plain text");
        let err = import_hdf5(
            &not_h5,
            &datasets,
            &tmp.path().join("o"),
            WriterOptions::default(),
        )
        .unwrap_err();
        assert!(import_message(err).1.contains("HDF5"));
    }
}

mod fuzz {
    use std::path::Path;

    use frugal_store::import::read_npy_header;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        /// Arbitrary bytes as an .npy file: an error or a header, never a panic.
        #[test]
        fn npy_headers_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..300)) {
            let _ = read_npy_header(&mut bytes.as_slice(), Path::new("fuzz.npy"));
        }

        /// A valid preamble with an arbitrary dictionary reaches the dictionary parser.
        #[test]
        fn npy_dictionaries_never_panic(dict in "[ -~]{0,120}") {
            let mut bytes = b"\x93NUMPY\x01\x00".to_vec();
            bytes.extend_from_slice(&(dict.len() as u16).to_le_bytes());
            bytes.extend_from_slice(dict.as_bytes());
            let _ = read_npy_header(&mut bytes.as_slice(), Path::new("fuzz.npy"));
        }
    }
}
