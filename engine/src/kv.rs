//! Allocation of KV-cache blocks to sequences. The backend owns the block data; this owns which
//! sequence uses which block.

use crate::{EngineError, Result};

/// Tokens per KV block.
pub const BLOCK_SIZE: usize = 16;

/// A free list over a fixed pool of blocks.
#[derive(Debug)]
pub struct BlockAllocator {
    free: Vec<u32>,
    total: usize,
}

impl BlockAllocator {
    /// A pool of `n` blocks, all free.
    pub fn new(n: usize) -> Self {
        Self { free: (0..n as u32).rev().collect(), total: n }
    }

    /// Blocks not in use.
    pub fn free_blocks(&self) -> usize {
        self.free.len()
    }

    /// All blocks.
    pub fn total_blocks(&self) -> usize {
        self.total
    }

    /// Grows `table` until it covers `tokens` positions.
    pub fn reserve(&mut self, table: &mut Vec<u32>, tokens: usize) -> Result<()> {
        let need = tokens.div_ceil(BLOCK_SIZE);
        if need > table.len() && need - table.len() > self.free.len() {
            return Err(EngineError::Request(format!(
                "KV cache is full: {tokens} tokens need {} more blocks, {} free",
                need - table.len(),
                self.free.len()
            )));
        }
        while table.len() < need {
            if let Some(b) = self.free.pop() {
                table.push(b);
            }
        }
        Ok(())
    }

    /// Returns a sequence's blocks to the pool.
    pub fn release(&mut self, table: &mut Vec<u32>) {
        self.free.append(table);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserve_and_release() {
        let mut a = BlockAllocator::new(4);
        let mut t = Vec::new();
        a.reserve(&mut t, 17).unwrap();
        assert_eq!(t.len(), 2);
        assert!(a.reserve(&mut t, 100).is_err());
        assert_eq!(t.len(), 2, "a failed reserve takes nothing");
        a.release(&mut t);
        assert_eq!(a.free_blocks(), 4);
    }
}
