//! `/mcp`: ragway as an MCP server (the Model Context Protocol's streamable HTTP transport, served
//! statelessly by the official Rust SDK, so any replica answers any request). Agents reach a
//! tenant's collections with the tenant's API key: the route sits behind the same layers as `/v1`
//! (authentication, the request rate, the body's bounds), and each tool calls what the matching
//! `/v1` route calls, so quotas, deadlines, caches and modes are the same.
//!
//! Tools: `list_collections`, `search` (as `/search`) and `ask` (as `/query`: an answer with its
//! citations and `mode`). A refusal (a collection that does not exist, a query over a limit, a
//! quota spent) is the tool's error result carrying ragway's error shape and HTTP status, which an
//! agent can read; arguments that do not fit the tool's schema are a protocol error.

use std::sync::Arc;

use rmcp::handler::server::router::tool::ToolRouter;
use rmcp::handler::server::wrapper::Parameters;
use rmcp::model::{CallToolResult, Implementation, ServerCapabilities, ServerConfig};
use rmcp::service::RequestContext;
use rmcp::transport::streamable_http_server::session::local::LocalSessionManager;
use rmcp::transport::streamable_http_server::{StreamableHttpServerConfig, StreamableHttpService};
use rmcp::{schemars, tool, tool_handler, tool_router, ErrorData, RoleServer, ServerHandler};
use serde::Deserialize;
use serde_json::{json, Value};

use super::auth::Caller;
use super::routes::answers;
use super::AppState;
use crate::config::AuthMode;
use crate::error::ApiError;

/// The service mounted at `/mcp`.
pub fn service(state: &AppState) -> StreamableHttpService<Mcp, LocalSessionManager> {
    let mut config = StreamableHttpServerConfig::default();
    // No sessions: a request carries all it needs (its key), so replicas share nothing for MCP.
    config.legacy_session_mode = false;
    config.json_response = true;
    config.max_request_body_bytes = state.config.server.max_body_bytes;
    config.allowed_hosts = match (&state.config.server.mcp_allowed_hosts, &state.config.auth.mode) {
        (Some(hosts), _) => hosts.clone(),
        // With keys required a page that rebinds a name to ragway still lacks a key.
        (None, AuthMode::Keys) => Vec::new(),
        (None, AuthMode::Open) => config.allowed_hosts,
    };
    let state = state.clone();
    StreamableHttpService::new(
        move || Ok(Mcp::new(state.clone())),
        Arc::new(LocalSessionManager::default()),
        config,
    )
}

#[derive(Clone)]
pub struct Mcp {
    state: AppState,
    tool_router: ToolRouter<Self>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SearchArgs {
    /// The collection to search (one of `list_collections`).
    pub collection: String,
    /// What to look for, in plain words.
    pub query: String,
    /// How many passages to return (1–100; the server's default when absent).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Only passages whose document metadata has every one of these key-value pairs.
    #[serde(default)]
    pub filter: Option<serde_json::Map<String, Value>>,
}

#[derive(Debug, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AskArgs {
    /// The collection whose documents ground the answer.
    pub collection: String,
    /// The question.
    pub question: String,
    /// How many passages the answer is written from (1–100; the server's default when absent).
    #[serde(default)]
    pub top_k: Option<usize>,
    /// Only passages whose document metadata has every one of these key-value pairs.
    #[serde(default)]
    pub filter: Option<serde_json::Map<String, Value>>,
}

#[tool_router]
impl Mcp {
    fn new(state: AppState) -> Self {
        Self {
            state,
            tool_router: Self::tool_router(),
        }
    }

    #[tool(
        description = "Lists the collections this API key may search: name, documents, chunks, embedder.",
        annotations(read_only_hint = true)
    )]
    async fn list_collections(&self, ctx: RequestContext<RoleServer>) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&ctx)?;
        let listed = caller.collections(&self.state).map(|all| {
            let collections: Vec<_> = all.iter().map(|c| caller.present(c.info())).collect();
            json!({ "collections": collections })
        });
        Ok(result(listed))
    }

    #[tool(
        description = "Hybrid search (dense + BM25, fused, reranked) of one collection: the best passages with their document ids, scores and metadata, and the mode the search ran in.",
        annotations(read_only_hint = true)
    )]
    async fn search(
        &self,
        Parameters(args): Parameters<SearchArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&ctx)?;
        let request = ragway_openapi::SearchRequest {
            query: args.query,
            top_k: args.top_k,
            filter: args.filter,
            deadline_ms: None,
            fusion: None,
        };
        let searched = answers::searched(&self.state, &caller, &args.collection, &request).await;
        Ok(result(searched.map(|found| json!(found))))
    }

    #[tool(
        description = "Answers a question from one collection's documents: the answer, the passages it cites, and the mode it was written in (`normal`, or how it degraded).",
        annotations(read_only_hint = true)
    )]
    async fn ask(
        &self,
        Parameters(args): Parameters<AskArgs>,
        ctx: RequestContext<RoleServer>,
    ) -> Result<CallToolResult, ErrorData> {
        let caller = caller(&ctx)?;
        let request = ragway_openapi::QueryRequest {
            query: args.question,
            top_k: args.top_k,
            filter: args.filter,
            stream: None,
            deadline_ms: None,
            fusion: None,
            llm: None,
        };
        let answered = answers::answered(&self.state, &caller, &args.collection, &request).await;
        Ok(result(answered.map(|answer| json!(answer))))
    }
}

#[tool_handler(router = self.tool_router)]
impl ServerHandler for Mcp {
    fn get_info(&self) -> ServerConfig {
        ServerConfig::new(ServerCapabilities::builder().enable_tools().build())
            .with_server_info(Implementation::new("ragway", env!("CARGO_PKG_VERSION")))
            .with_instructions(
                "ragway's collections of documents: list them, search one for passages, or ask one \
                 a question for a grounded answer with citations. Every result says its `mode`: \
                 anything but `normal` means part of the pipeline did not run (see `degraded`).",
            )
    }
}

/// The caller the `/v1` layers admitted for this request.
fn caller(ctx: &RequestContext<RoleServer>) -> Result<Caller, ErrorData> {
    ctx.extensions
        .get::<axum::http::request::Parts>()
        .and_then(|parts| parts.extensions.get::<Caller>())
        .cloned()
        .ok_or_else(|| ErrorData::internal_error("the request reached /mcp without its caller", None))
}

/// A tool's result: the value as structured content, or ragway's error shape with its HTTP status
/// (and `retry_after_s` where waiting helps) as the tool's error.
fn result(outcome: Result<Value, ApiError>) -> CallToolResult {
    match outcome {
        Ok(value) => CallToolResult::structured(value),
        Err(error) => {
            let mut body = json!(error.body());
            body["status"] = json!(error.http_status().as_u16());
            if let Some(seconds) = error.retry_after_s() {
                body["retry_after_s"] = json!(seconds);
            }
            CallToolResult::structured_error(body)
        }
    }
}
