//! `HostBytes::release_pages`: a view of a file mapping gives its pages back (the process's
//! resident size for that mapping drops) and still reads the same bytes; a view of owned
//! memory is left alone.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::Arc;

use govbox_drivers::HostBytes;

/// The `Rss` of the mapping that starts at `addr`, from `/proc/self/smaps`, in KiB.
fn mapping_rss_kib(addr: usize) -> Option<u64> {
    let smaps = std::fs::read_to_string("/proc/self/smaps").ok()?;
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        // A mapping's header starts with its address range; its fields start with `Name:`.
        if !first.ends_with(':')
            && let Some((lo, _)) = first.split_once('-')
        {
            inside = usize::from_str_radix(lo, 16) == Ok(addr);
            continue;
        }
        if inside && let Some(v) = line.strip_prefix("Rss:") {
            return v.trim().trim_end_matches("kB").trim().parse().ok();
        }
    }
    None
}

#[test]
fn a_file_mapping_gives_its_pages_back_and_keeps_its_bytes() {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..8u32 << 20).map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8).collect();
    f.write_all(&bytes).unwrap();
    f.flush().unwrap();
    // SAFETY: a private read-only mapping of a temporary file that nothing else writes.
    let map = unsafe { memmap2::MmapOptions::new().populate().map(f.as_file()) }.unwrap();
    let addr = map.as_ptr() as usize;
    let map: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(map);
    // SAFETY: as above: the mapping is private and read-only, and its file is not modified.
    let view = unsafe { HostBytes::file_mapping(map.clone(), 4096, bytes.len() - 8192) }.unwrap();
    let Some(before) = mapping_rss_kib(addr) else {
        eprintln!("skipping: /proc/self/smaps has no entry for the mapping");
        return;
    };
    assert!(before >= 8 * 1024 - 64, "MAP_POPULATE should fault the whole file in: {before} KiB");
    view.release_pages_in(0..view.len() / 2);
    let half = mapping_rss_kib(addr).unwrap();
    view.release_pages();
    let after = mapping_rss_kib(addr).unwrap();
    eprintln!("mapping RSS: {before} KiB, after releasing half of the view {half} KiB, all of it {after} KiB");
    assert!(half < before - 3 * 1024 && half > before - 5 * 1024, "half: {before} -> {half} KiB");
    assert!(after <= 8, "the first and last page lie outside the view, little else may stay: {after} KiB");
    // The bytes read back from the file, unchanged.
    assert!(view.as_slice() == &bytes[4096..bytes.len() - 4096]);
    assert!(mapping_rss_kib(addr).unwrap() >= 8 * 1024 - 64);
}

#[test]
fn owned_bytes_are_left_alone() {
    let bytes: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8 + 1).collect();
    let view = HostBytes::from_vec(bytes.clone());
    view.release_pages();
    assert!(view.as_slice() == bytes.as_slice(), "releasing owned memory must not change (zero) it");
}

/// `values` written to a temporary file and mapped read-only (every page faulted in with
/// `populate`): the file, which must outlive the mapping's use, the mapping, and its address.
fn mapped_f32(values: &[f32], populate: bool) -> (tempfile::NamedTempFile, Arc<dyn AsRef<[u8]> + Send + Sync>, usize) {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    f.write_all(bytemuck::cast_slice(values)).unwrap();
    f.flush().unwrap();
    let mut options = memmap2::MmapOptions::new();
    if populate {
        options.populate();
    }
    // SAFETY: a private read-only mapping of a temporary file that nothing else writes.
    let map = unsafe { options.map(f.as_file()) }.unwrap();
    let addr = map.as_ptr() as usize;
    (f, Arc::new(map), addr)
}

#[test]
fn a_small_tensor_of_a_file_mapping_is_read_from_a_copy() {
    use govbox_drivers::cpu::CpuBackend;
    use govbox_drivers::{Backend, DType};
    let values: Vec<f32> = (0..2u32 << 20).map(|i| i as f32 * 0.5).collect();
    let (_file, map, addr) = mapped_f32(&values, false);
    // SAFETY: as above.
    let whole = |start, len| unsafe { HostBytes::file_mapping(map.clone(), start, len) }.unwrap();
    // A norm-sized tensor (1024 values) in the middle of the file, and a large one (4 MiB).
    let (small_at, large_at) = (3 << 20, 4 << 20);
    let cpu = CpuBackend::new(1).unwrap();
    let small = cpu.upload(whole(small_at, 4096), DType::F32, &[1024]).unwrap();
    let large = cpu.upload(whole(large_at, 4 << 20), DType::F32, &[1 << 20]).unwrap();
    whole(0, values.len() * 4).release_pages();
    let Some(before) = mapping_rss_kib(addr) else {
        eprintln!("skipping: /proc/self/smaps has no entry for the mapping");
        return;
    };
    // Reading the small tensor touches no page of the file; the large one is read in place.
    assert_eq!(cpu.download_f32(&small).unwrap(), values[small_at / 4..small_at / 4 + 1024]);
    let after_small = mapping_rss_kib(addr).unwrap();
    assert_eq!(cpu.download_f32(&large).unwrap(), values[large_at / 4..large_at / 4 + (1 << 20)]);
    let after_large = mapping_rss_kib(addr).unwrap();
    eprintln!(
        "mapping RSS: {before} KiB released, {after_small} after the small tensor, {after_large} after the large"
    );
    assert_eq!(after_small, before, "the small tensor was read from the file mapping");
    assert!(after_large >= before + 4 * 1024 - 64, "the large tensor is expected in place: {after_large} KiB");
}

/// Copying a small tensor reads it through the mapping, which maps the page cache's folio
/// around it whole (2 MiB on ext4 with large folios): the CPU backend gives back the whole
/// 2 MiB span around the tensor once it is copied, its neighbours' pages included, so that
/// the folios of a model's norms and biases do not stay mapped until the load ends.
#[test]
fn copying_a_small_tensor_gives_back_the_span_around_it() {
    use govbox_drivers::cpu::CpuBackend;
    use govbox_drivers::{Backend, DType};
    let values: Vec<f32> = (0..2u32 << 20).map(|i| i as f32 * 0.25).collect();
    let (_file, map, addr) = mapped_f32(&values, true);
    let Some(before) = mapping_rss_kib(addr) else {
        eprintln!("skipping: /proc/self/smaps has no entry for the mapping");
        return;
    };
    assert!(before >= 8 * 1024 - 64, "MAP_POPULATE should fault the whole file in: {before} KiB");
    // A norm-sized tensor (1,536 values) 100 values past 3 MiB: its span is 2..4 MiB.
    let at = (3 << 20) + 400;
    // SAFETY: as above: the mapping is private and read-only, and its file is not modified.
    let view = unsafe { HostBytes::file_mapping(map.clone(), at, 1536 * 4) }.unwrap();
    let cpu = CpuBackend::new(1).unwrap();
    let norm = cpu.upload(view, DType::F32, &[1536]).unwrap();
    let after = mapping_rss_kib(addr).unwrap();
    eprintln!("mapping RSS: {before} KiB, {after} KiB after copying the small tensor");
    assert_eq!(after, before - 2048, "the 2 MiB around the copied tensor, and no more, leave the process");
    assert_eq!(cpu.download_f32(&norm).unwrap(), values[at / 4..at / 4 + 1536]);
}

/// A discardable copy (the engine's copy of a development folder's file, in anonymous memory)
/// reads as zeros where a page is given back: `release_pages_around` gives back only the view's
/// own pages there, so the tensors beside a copied small one keep their bytes.
#[cfg(target_os = "linux")]
#[test]
fn a_discardable_copy_gives_back_only_a_views_own_pages() {
    let mut anon = memmap2::MmapMut::map_anon(8 << 20).unwrap();
    anon.iter_mut().enumerate().for_each(|(i, b)| *b = (i % 251) as u8 + 1);
    let map: Arc<dyn AsRef<[u8]> + Send + Sync> = Arc::new(anon.make_read_only().unwrap());
    // SAFETY: a private anonymous mapping made read-only; the released view is not read again.
    let view = |start, len| unsafe { HostBytes::discardable_copy(map.clone(), start, len) }.unwrap();
    let (small, beside) = (view((3 << 20) + 8192, 8192), view(3 << 20, 8192));
    small.release_pages_around(2 << 20);
    assert!(
        beside.as_slice().iter().enumerate().all(|(i, &b)| b == (((3 << 20) + i) % 251) as u8 + 1),
        "a neighbour of the released view lost its bytes"
    );
    assert!(small.as_slice().iter().all(|&b| b == 0), "the view's own pages were given back");
}
