//! Memory management: the frame allocator, stage-2 translation tables, VMIDs, and a model of the
//! two-stage page walk.

pub mod frame_alloc;
pub mod ram_map;
pub mod stage2;
pub mod vmid;
pub mod walk_model;
pub mod word_edit;
