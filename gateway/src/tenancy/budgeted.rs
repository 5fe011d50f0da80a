//! A tenant's budget around a stage, as a decorator of the stage's own trait: [`Budgeted`] is an
//! [`Embedder`] that refuses to embed once the request's tenant has spent its embedding budget
//! (`over_quota = "degrade"`; under `reject` the request was refused before it started). Put
//! behind L2, a cached query vector is still served: the answer is then `keyword_only` only when
//! nothing cached can stand in.

use std::sync::Arc;

use async_trait::async_trait;
use ragway_retrieval::{Embedder, Embeddings, Priority, RetrievalError};
use ragway_worker::Stopped;

use super::Allowance;

pub struct Budgeted<E: ?Sized> {
    inner: Arc<E>,
}

impl<E: ?Sized> Budgeted<E> {
    pub fn new(inner: Arc<E>) -> Self {
        Self { inner }
    }
}

#[async_trait]
impl<E: Embedder + ?Sized> Embedder for Budgeted<E> {
    fn model_id(&self) -> &str {
        self.inner.model_id()
    }
    fn dimension(&self) -> usize {
        self.inner.dimension()
    }
    fn backend(&self) -> &str {
        self.inner.backend()
    }
    async fn embed(&self, texts: Vec<String>, priority: Priority) -> Result<Embeddings, RetrievalError> {
        if Allowance::current(|a| a.embed_spent).unwrap_or(false) {
            return Err(Stopped::BudgetSpent.into());
        }
        self.inner.embed(texts, priority).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    struct Counting(AtomicUsize);

    #[async_trait]
    impl Embedder for Counting {
        fn model_id(&self) -> &str {
            "counting"
        }
        fn dimension(&self) -> usize {
            1
        }
        fn backend(&self) -> &str {
            "test"
        }
        async fn embed(&self, texts: Vec<String>, _: Priority) -> Result<Embeddings, RetrievalError> {
            self.0.fetch_add(1, Ordering::SeqCst);
            Ok(Embeddings {
                vectors: texts.iter().map(|_| vec![1.0]).collect(),
                tokens: texts.len(),
            })
        }
    }

    #[tokio::test]
    async fn a_spent_embedding_budget_stops_the_call_and_only_that_request() {
        let inner = Arc::new(Counting(AtomicUsize::new(0)));
        let budgeted = Budgeted::new(inner.clone());
        let spent = Allowance {
            embed_spent: true,
            ..Allowance::default()
        };
        let refused = spent
            .scope(budgeted.embed(vec!["q".into()], Priority::Interactive))
            .await;
        assert!(
            matches!(refused, Err(RetrievalError::Stopped(Stopped::BudgetSpent))),
            "{refused:?}"
        );
        assert_eq!(inner.0.load(Ordering::SeqCst), 0);
        let fresh = Allowance::default().scope(budgeted.embed(vec!["q".into()], Priority::Interactive));
        assert_eq!(fresh.await.map(|e| e.tokens).ok(), Some(1));
        let background = budgeted.embed(vec!["q".into()], Priority::Bulk).await;
        assert!(background.is_ok(), "outside a request nothing is spent");
        assert_eq!(inner.0.load(Ordering::SeqCst), 2);
    }
}
