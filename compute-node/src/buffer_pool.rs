//! The buffer pool shared by every SQLite connection of the process (DESIGN.md §4): the newest
//! image of recently used pages, least recently used out first. A miss is read from storage.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};

use logdb_types::PageId;

struct Inner {
    pages: HashMap<PageId, (Arc<Vec<u8>>, u64)>,
    by_use: BTreeMap<u64, PageId>,
    clock: u64,
}

pub struct BufferPool {
    capacity: usize,
    inner: Mutex<Inner>,
}

impl BufferPool {
    pub fn new(capacity_pages: usize) -> Self {
        BufferPool {
            capacity: capacity_pages.max(1),
            inner: Mutex::new(Inner {
                pages: HashMap::new(),
                by_use: BTreeMap::new(),
                clock: 0,
            }),
        }
    }

    pub fn get(&self, page: PageId) -> Option<Arc<Vec<u8>>> {
        let mut g = self.inner.lock().expect("pool lock");
        let inner = &mut *g;
        inner.clock += 1;
        let now = inner.clock;
        let (data, used) = inner.pages.get_mut(&page)?;
        inner.by_use.remove(used);
        *used = now;
        inner.by_use.insert(now, page);
        Some(Arc::clone(data))
    }

    pub fn put(&self, page: PageId, data: Arc<Vec<u8>>) {
        let mut g = self.inner.lock().expect("pool lock");
        let inner = &mut *g;
        inner.clock += 1;
        let now = inner.clock;
        if let Some((_, used)) = inner.pages.insert(page, (data, now)) {
            inner.by_use.remove(&used);
        }
        inner.by_use.insert(now, page);
        while inner.pages.len() > self.capacity {
            let Some((_, victim)) = inner.by_use.pop_first() else {
                break;
            };
            inner.pages.remove(&victim);
        }
    }

    /// The page if cached, without counting a use.
    pub fn peek(&self, page: PageId) -> Option<Arc<Vec<u8>>> {
        let g = self.inner.lock().expect("pool lock");
        g.pages.get(&page).map(|(d, _)| Arc::clone(d))
    }

    /// Drops every page.
    pub fn clear(&self) {
        let mut g = self.inner.lock().expect("pool lock");
        g.pages.clear();
        g.by_use.clear();
    }

    pub fn len(&self) -> usize {
        self.inner.lock().expect("pool lock").pages.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn least_recently_used_goes_first() {
        let pool = BufferPool::new(2);
        pool.put(PageId(1), Arc::new(vec![1]));
        pool.put(PageId(2), Arc::new(vec![2]));
        assert!(pool.get(PageId(1)).is_some());
        pool.put(PageId(3), Arc::new(vec![3]));
        assert!(pool.get(PageId(2)).is_none(), "2 was least recently used");
        assert_eq!(*pool.get(PageId(1)).unwrap(), vec![1]);
        assert_eq!(*pool.get(PageId(3)).unwrap(), vec![3]);
        pool.put(PageId(3), Arc::new(vec![4]));
        assert_eq!(*pool.get(PageId(3)).unwrap(), vec![4]);
        assert_eq!(pool.len(), 2);
    }
}
