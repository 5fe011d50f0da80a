pub mod answers;
pub mod collections;
pub mod embeddings;
pub mod health;
