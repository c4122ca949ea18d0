//! What the model families' integration tests share.

use frugal_store::{Batch, Dataset, Order, OrderSpec, StreamOptions};

/// `ds` streamed in batches of `batch`, in the window order training uses, shuffled by
/// `seed`.
pub(crate) fn batches(ds: &Dataset, batch: usize, seed: u64) -> impl Iterator<Item = Batch> {
    let spec = OrderSpec {
        order: Order::Window,
        window: 256,
        spread: 4,
    };
    ds.stream(StreamOptions::new(spec, seed, 0, batch))
        .unwrap()
        .map(Result::unwrap)
}
