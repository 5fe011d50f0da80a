pub mod admin;
pub mod answers;
pub mod collections;
pub mod embeddings;
pub mod health;
pub mod jobs;
pub mod openai;
pub mod streams;
