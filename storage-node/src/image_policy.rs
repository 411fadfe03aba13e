//! When a page gets a new image, and how often retention checkpoints (pure arithmetic, no I/O).
//!
//! A page's history is its deltas; an image only shortcuts reading them. One is written when
//! the deltas above the page's newest image would cost more to apply than the image costs to
//! store: their frames pass `IMAGE_AFTER_PAGES` page sizes, or their count passes
//! `IMAGE_AFTER_RECORDS` (what a read applies stays bounded for hot pages with tiny deltas).
//! Images therefore add at most 1/`IMAGE_AFTER_PAGES` of the redo bytes they cover, plus one
//! image per `IMAGE_AFTER_RECORDS` records of a hot page. Retention moves its horizon only to
//! checkpoints, `CHECKPOINTS_PER_WINDOW` per window, and each checkpoint images every page
//! changed since the one before (so the deltas and log files below it can go).

/// The deltas of one page above its newest image.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Debt {
    pub records: u64,
    /// Bytes of their log frames.
    pub bytes: u64,
}

impl Debt {
    pub fn add(&mut self, frame_bytes: u64) {
        self.records += 1;
        self.bytes += frame_bytes;
    }
}

/// A page whose deltas' frames pass this many page sizes gets an image.
pub const IMAGE_AFTER_PAGES: u64 = 4;
/// A page with this many deltas above its image gets one, whatever their size.
pub const IMAGE_AFTER_RECORDS: u64 = 256;
/// Checkpoints per retention window: the horizon moves in steps of window / this.
pub const CHECKPOINTS_PER_WINDOW: u64 = 8;

/// Whether `debt` is due an image.
pub fn image_due(debt: &Debt, page_size: u32) -> bool {
    debt.records >= IMAGE_AFTER_RECORDS || debt.bytes >= IMAGE_AFTER_PAGES * page_size as u64
}

/// Milliseconds between two checkpoints of a segment retaining `retention_secs`.
pub fn checkpoint_step_ms(retention_secs: u64) -> u64 {
    retention_secs.saturating_mul(1000) / CHECKPOINTS_PER_WINDOW
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn images_follow_bytes_or_records() {
        let mut d = Debt::default();
        for _ in 0..163 {
            d.add(200);
        }
        assert!(
            !image_due(&d, 8192),
            "32.6 KB of deltas is under four pages"
        );
        d.add(200);
        assert!(image_due(&d, 8192), "32.8 KB passes four 8 KiB pages");
        let tiny = Debt {
            records: IMAGE_AFTER_RECORDS,
            bytes: IMAGE_AFTER_RECORDS * 10,
        };
        assert!(image_due(&tiny, 8192), "a hot page with tiny deltas");
        assert!(!image_due(&Debt::default(), 4096));
    }

    #[test]
    fn checkpoints_divide_the_window() {
        assert_eq!(checkpoint_step_ms(3600), 450_000);
        assert_eq!(checkpoint_step_ms(1), 125);
        assert_eq!(checkpoint_step_ms(0), 0);
    }
}
