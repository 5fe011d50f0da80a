//! Imports (`/import`): the documents of a body being read, recorded part by part in the job
//! store ([`ImportSpool`]), then one job over the parts.

use std::sync::Arc;

use ragway_openapi::{DocumentInput, JobStatus};

use super::{parts, Admitted, Input, Jobs};
use crate::catalog::collections::Collection;
use crate::error::ApiError;

/// An import being read: its documents recorded part by part as they come; forgotten unless it
/// becomes a job ([`Jobs::submit_import`]).
pub struct ImportSpool {
    jobs: Arc<Jobs>,
    pub id: String,
    parts: usize,
    documents: usize,
    chunks: usize,
    submitted: bool,
}

impl ImportSpool {
    /// Records the next part: `documents` (at most [`PART_DOCUMENTS`]; only the last part may hold
    /// fewer) making `chunks` chunks.
    pub async fn push(&mut self, documents: Vec<DocumentInput>, chunks: usize) -> Result<(), ApiError> {
        let count = documents.len();
        let bytes = tokio::task::spawn_blocking(move || parts::encode(&documents))
            .await
            .map_err(|e| ApiError::Internal(e.to_string()))?
            .map_err(ApiError::Internal)?;
        self.jobs
            .store
            .put_part(&self.id, self.parts, bytes)
            .await
            .map_err(|e| self.jobs.failed(e))?;
        self.parts += 1;
        self.documents += count;
        self.chunks += chunks;
        Ok(())
    }

    pub fn documents(&self) -> usize {
        self.documents
    }
}

impl Drop for ImportSpool {
    fn drop(&mut self) {
        if self.submitted || self.parts == 0 {
            return;
        }
        let (jobs, id, parts) = (self.jobs.clone(), self.id.clone(), self.parts);
        tokio::spawn(async move { jobs.store.drop_parts(&id, parts).await });
    }
}

impl Jobs {
    /// Starts reading an import (see [`ImportSpool`]).
    pub fn import(self: &Arc<Self>) -> ImportSpool {
        ImportSpool {
            jobs: self.clone(),
            id: uuid::Uuid::new_v4().simple().to_string(),
            parts: 0,
            documents: 0,
            chunks: 0,
            submitted: false,
        }
    }

    /// Records an import read whole as a background job (its id is the spool's) and starts it.
    pub async fn submit_import(
        self: &Arc<Self>,
        collection: Arc<Collection>,
        mut spool: ImportSpool,
        admitted: Admitted,
    ) -> Result<JobStatus, ApiError> {
        let input = Input::Parts {
            count: spool.parts,
            documents: spool.documents,
            chunks: spool.chunks,
        };
        let id = spool.id.clone();
        let (status, _) = self.submit_input(collection, input, true, &id, admitted).await?;
        spool.submitted = true;
        Ok(status)
    }

    /// Part `n` of import `id`, decoded off the runtime.
    pub(super) async fn read_part(&self, id: &str, n: usize) -> Result<Vec<DocumentInput>, String> {
        let bytes = self.store.part(id, n).await?;
        tokio::task::spawn_blocking(move || parts::decode(&bytes))
            .await
            .map_err(|e| e.to_string())?
            .map_err(|e| format!("part {n} of the import is unreadable: {e}"))
    }
}
