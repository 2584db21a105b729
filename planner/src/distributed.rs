//! Running a block dataflow on several processes with `datafusion-distributed`.
//!
//! The strategies of [`crate::la::flow`] are plans of DataFusion's own exchanges, so a
//! distributed run cuts the same plan at them: hash repartitions become network
//! shuffles, the build side of a collect-left join a network broadcast, a coalesce a
//! network coalesce. Three pieces make that work for Tessera's operators:
//!
//! - [`FlowCodec`] carries the block operators across processes as plain data: a scan
//!   as the array's name and version, never a handle; a worker opens the version from
//!   its own read-only view of the store ([`tessera_storage::Store::open_reader`]);
//! - a block scan asks for one task per shard (capped by the worker count), and each
//!   task reads the shards `k` with `k % tasks == task`, so a shard is read once and
//!   partition `k` still holds shard `k` (the placement the plan above relies on);
//! - [`DistributedGate`] sends a statement to the workers only when its whole plan is
//!   a dataflow the codec can carry and it reads at least one stored matrix with more
//!   than one shard; every other statement runs in this process as before.
//!
//! The coordinator keeps the versions it planned pinned until the statement ends, and
//! only the coordinator collects garbage, so a worker never finds a version gone while
//! a query reads it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use datafusion::catalog::Session;
use datafusion::common::{DataFusionError, Result, internal_err};
use datafusion::execution::context::QueryPlanner;
use datafusion::execution::{SessionStateBuilder, TaskContext};
use datafusion::logical_expr::{LogicalPlan, PlanType, StringifiedPlan};
use datafusion::physical_plan::ExecutionPlan;
use datafusion::physical_plan::explain::ExplainExec;
use datafusion_distributed::grpc::{BoxCloneSyncChannel, create_worker_client};
use datafusion_distributed::{
    ChannelResolver, DesiredTaskCountEvent, DesiredTaskCountEventResponse, DistributedCodec,
    DistributedExec, DistributedExt, NetworkBoundaryExt, RouteTasksEvent, RouteTasksEventResponse,
    RouteTasksHandler, SessionStateBuilderExt, Stage, Worker, WorkerChannel, WorkerQueryContext,
    WorkerResolver, display_plan_ascii,
};
use datafusion_proto::physical_plan::{PhysicalExtensionCodec, PhysicalProtoConverterExtension};
use serde::{Deserialize, Serialize};
use tessera_storage::Store;

use crate::error::storage_error;
use crate::la::flow::{
    BlockAssembleExec, BlockCellsExec, BlockElementwiseExec, BlockGatherExec, BlockGenerateExec,
    BlockMap, BlockMapExec, BlockProductExec, BlockScanExec, BlockSumExec, BlockWindow,
    BlockWriteExec, BlockZipJoinExec, ExchangeMeterExec, Fold, FusedPartialExec, Gathered,
    Generator, OutputKeys,
};
use crate::la::{FlowGeometry, Pinned, TesseraQueryPlanner};

/// Attempts a distributed statement gets when workers are lost while it runs (Spark
/// tries a task 4 times): the first run and up to three on the workers left.
pub const ATTEMPTS: usize = 4;

/// One block operator as it travels: its parameters; its inputs travel beside it.
#[derive(Debug, Serialize, Deserialize)]
enum FlowNode {
    Scan {
        array: String,
        version: u64,
        window: Option<BlockWindow>,
    },
    Map(BlockMap),
    Product {
        a_at: usize,
        b_at: usize,
        i: Vec<usize>,
        j: Vec<usize>,
        single: bool,
        exact: bool,
    },
    Sum {
        single: bool,
        fold: Fold,
    },
    Fused {
        rows_together: bool,
        exact: bool,
        centred: bool,
    },
    Zip,
    Elementwise {
        steps: Vec<tessera_storage::kernels::Step>,
        shape: (u64, u64),
        block: (u64, u64),
    },
    Meter,
    Generate {
        generator: Generator,
        shape: (u64, u64),
        block: (u64, u64),
        parts: usize,
    },
    Assemble {
        shape: (u64, u64),
        block: (u64, u64),
    },
    Cells {
        shape: (u64, u64),
        block: (u64, u64),
        planned: crate::la::flow::Planned,
        one_cell: bool,
    },
    Write {
        target: tessera_storage::PartTarget,
    },
    Gather {
        op: Gathered,
        inputs: Vec<((u64, u64), (u64, u64))>,
        shape: (u64, u64),
        block: (u64, u64),
    },
}

/// Encodes and decodes Tessera's block operators for `datafusion-distributed`. On a
/// worker, scans open their array version from `store`, a read-only view of the
/// coordinator's data directory.
#[derive(Debug, Clone)]
pub struct FlowCodec {
    store: Store,
}

impl FlowCodec {
    /// A codec whose decoded scans read from `store`.
    pub fn new(store: Store) -> Self {
        Self { store }
    }

    fn node_of(node: &Arc<dyn ExecutionPlan>) -> Option<FlowNode> {
        if let Some(scan) = node.downcast_ref::<BlockScanExec>() {
            let pinned = scan.pinned();
            return Some(FlowNode::Scan {
                array: pinned.name().to_string(),
                version: pinned.0.version(),
                window: scan.window(),
            });
        }
        if let Some(map) = node.downcast_ref::<BlockMapExec>() {
            return Some(FlowNode::Map(map.map));
        }
        if let Some(p) = node.downcast_ref::<BlockProductExec>() {
            return Some(FlowNode::Product {
                a_at: p.a_at,
                b_at: p.b_at,
                i: p.keys.i.clone(),
                j: p.keys.j.clone(),
                single: p.single,
                exact: p.exact,
            });
        }
        if let Some(s) = node.downcast_ref::<BlockSumExec>() {
            return Some(FlowNode::Sum {
                single: s.single,
                fold: s.fold,
            });
        }
        if let Some(f) = node.downcast_ref::<FusedPartialExec>() {
            return Some(FlowNode::Fused {
                rows_together: f.rows_together,
                exact: f.exact,
                centred: f.centred,
            });
        }
        if node.is::<BlockZipJoinExec>() {
            return Some(FlowNode::Zip);
        }
        if let Some(e) = node.downcast_ref::<BlockElementwiseExec>() {
            let FlowGeometry { shape, block } = e.geometry();
            return Some(FlowNode::Elementwise {
                steps: e.steps.clone(),
                shape,
                block,
            });
        }
        if node.is::<ExchangeMeterExec>() {
            return Some(FlowNode::Meter);
        }
        if let Some(g) = node.downcast_ref::<BlockGenerateExec>() {
            let FlowGeometry { shape, block } = g.geometry();
            return Some(FlowNode::Generate {
                generator: g.generator,
                shape,
                block,
                parts: g.properties().partitioning.partition_count(),
            });
        }
        if let Some(a) = node.downcast_ref::<BlockAssembleExec>() {
            let FlowGeometry { shape, block } = a.geometry();
            return Some(FlowNode::Assemble { shape, block });
        }
        if let Some(g) = node.downcast_ref::<BlockGatherExec>() {
            return Some(FlowNode::Gather {
                op: g.op,
                inputs: g.geometries.iter().map(|x| (x.shape, x.block)).collect(),
                shape: g.output.shape,
                block: g.output.block,
            });
        }
        if let Some(w) = node.downcast_ref::<BlockWriteExec>() {
            return Some(FlowNode::Write {
                target: w.target.clone(),
            });
        }
        if let Some(c) = node.downcast_ref::<BlockCellsExec>() {
            let FlowGeometry { shape, block } = c.geometry();
            return Some(FlowNode::Cells {
                shape,
                block,
                planned: c.planned.clone(),
                one_cell: c.one_cell,
            });
        }
        None
    }

    fn build(
        &self,
        node: FlowNode,
        inputs: &[Arc<dyn ExecutionPlan>],
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let one = || match inputs {
            [input] => Ok(Arc::clone(input)),
            _ => internal_err!(
                "a block operator arrived with {} inputs, expected 1",
                inputs.len()
            ),
        };
        Ok(match node {
            FlowNode::Scan {
                array,
                version,
                window,
            } => {
                if !inputs.is_empty() {
                    return internal_err!("a block scan arrived with inputs");
                }
                let snapshot = self
                    .store
                    .snapshot(&array, Some(version))
                    .map_err(storage_error)?;
                Arc::new(BlockScanExec::new(Pinned(Arc::new(snapshot))).with_window(window))
            }
            FlowNode::Map(map) => Arc::new(BlockMapExec::try_new(one()?, map)?),
            FlowNode::Product {
                a_at,
                b_at,
                i,
                j,
                single,
                exact,
            } => {
                let mut p = BlockProductExec::with_keys(one()?, a_at, b_at, OutputKeys { i, j })?;
                p.single = single;
                p.exact = exact;
                Arc::new(p)
            }
            FlowNode::Sum { single, fold } => Arc::new(BlockSumExec::build(one()?, single, fold)?),
            FlowNode::Fused {
                rows_together,
                exact,
                centred,
            } => {
                let mut f = match inputs {
                    [x] => FusedPartialExec::try_new(Arc::clone(x), None, rows_together)?,
                    [x, v] => FusedPartialExec::try_new(
                        Arc::clone(x),
                        Some(Arc::clone(v)),
                        rows_together,
                    )?,
                    _ => {
                        return internal_err!(
                            "a fused partial arrived with {} inputs",
                            inputs.len()
                        );
                    }
                };
                f.exact = exact;
                f.centred = centred && f.children().len() == 2;
                Arc::new(f)
            }
            FlowNode::Zip => match inputs {
                [a, b] => Arc::new(BlockZipJoinExec::try_new(Arc::clone(a), Arc::clone(b))?),
                _ => return internal_err!("a zip join arrived with {} inputs", inputs.len()),
            },
            FlowNode::Elementwise {
                steps,
                shape,
                block,
            } => Arc::new(BlockElementwiseExec::try_new(
                inputs.to_vec(),
                steps,
                FlowGeometry { shape, block },
            )?),
            FlowNode::Meter => Arc::new(ExchangeMeterExec::new(one()?)),
            FlowNode::Generate {
                generator,
                shape,
                block,
                parts,
            } => {
                if !inputs.is_empty() {
                    return internal_err!("a block generator arrived with inputs");
                }
                Arc::new(BlockGenerateExec::new(
                    generator,
                    FlowGeometry { shape, block },
                    parts,
                ))
            }
            FlowNode::Assemble { shape, block } => Arc::new(BlockAssembleExec::try_new(
                one()?,
                FlowGeometry { shape, block },
            )?),
            FlowNode::Cells {
                shape,
                block,
                planned,
                one_cell,
            } => {
                let geometry = FlowGeometry { shape, block };
                Arc::new(if one_cell {
                    BlockCellsExec::one_cell(one()?, geometry, planned)?
                } else {
                    BlockCellsExec::try_new(one()?, geometry, planned)?
                })
            }
            // A worker stores the blocks it computed in part files of the write, in the
            // shared data directory.
            FlowNode::Gather {
                op,
                inputs: geometries,
                shape,
                block,
            } => Arc::new(BlockGatherExec::try_new(
                inputs.to_vec(),
                op,
                geometries
                    .into_iter()
                    .map(|(shape, block)| FlowGeometry { shape, block })
                    .collect(),
                FlowGeometry { shape, block },
            )?),
            FlowNode::Write { target } => {
                Arc::new(BlockWriteExec::try_new(one()?, target, self.store.clone())?)
            }
        })
    }
}

impl PhysicalExtensionCodec for FlowCodec {
    fn try_decode(
        &self,
        buf: &[u8],
        inputs: &[Arc<dyn ExecutionPlan>],
        _ctx: &TaskContext,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let node: FlowNode = serde_json::from_slice(buf).map_err(|e| {
            DataFusionError::Internal(format!("a block operator could not be decoded: {e}"))
        })?;
        self.build(node, inputs)
    }

    fn try_encode(
        &self,
        node: Arc<dyn ExecutionPlan>,
        buf: &mut Vec<u8>,
        _proto_converter: &dyn PhysicalProtoConverterExtension,
    ) -> Result<()> {
        let Some(flow) = Self::node_of(&node) else {
            return Err(DataFusionError::NotImplemented(format!(
                "{} cannot run on a worker",
                node.name()
            )));
        };
        serde_json::to_writer(buf, &flow).map_err(|e| {
            DataFusionError::Internal(format!("a block operator could not be encoded: {e}"))
        })
    }
}

/// A block scan asks for one task per shard (the planner caps it at the worker count).
fn scan_tasks(ev: DesiredTaskCountEvent<'_>) -> Option<Result<DesiredTaskCountEventResponse>> {
    let scan = ev.plan.downcast_ref::<BlockScanExec>()?;
    let shards = scan.properties().partitioning.partition_count();
    Some(Ok(DesiredTaskCountEventResponse::desired(shards.max(1))))
}

/// Plans each statement in this process, and hands it to the distributed planner
/// instead when it scans a stored matrix of several shards and every stage the workers
/// would run can travel (DataFusion's own operators and the block operators of
/// [`FlowCodec`]; the head stage, which stays here, may hold anything, such as a
/// `sum(v)` folded over the blocks).
#[derive(Debug)]
pub struct DistributedGate {
    local: Arc<dyn QueryPlanner + Send + Sync>,
    distributed: Arc<dyn QueryPlanner + Send + Sync>,
}

impl DistributedGate {
    /// True when `plan` reads a stored matrix of several shards (worth distributing).
    fn scans_shards(plan: &Arc<dyn ExecutionPlan>) -> bool {
        plan.downcast_ref::<BlockScanExec>()
            .is_some_and(|s| s.properties().partitioning.partition_count() > 1)
            || plan.children().into_iter().any(Self::scans_shards)
    }

    /// True when every stage of the distributed plan `plan` that workers would run can
    /// be encoded (the head stage stays in this process and may hold anything).
    fn stages_travel(plan: &Arc<dyn ExecutionPlan>, codec: &dyn PhysicalExtensionCodec) -> bool {
        if let Some(boundary) = plan.as_network_boundary()
            && let Stage::Local(stage) = boundary.input_stage()
            && (datafusion_proto::bytes::physical_plan_to_bytes_with_extension_codec(
                Arc::clone(&stage.plan),
                codec,
            )
            .is_err()
                || !Self::stages_travel(&stage.plan, codec))
        {
            return false;
        }
        plan.children()
            .into_iter()
            .all(|child| Self::stages_travel(child, codec))
    }

    async fn plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        let local = self
            .local
            .create_physical_plan(logical_plan, session_state)
            .await?;
        let wanted = session_state
            .config_options()
            .extensions
            .get::<crate::la::TesseraConfig>()
            .is_none_or(|c| c.distributed);
        if !wanted || !Self::scans_shards(&local) {
            return Ok(local);
        }
        // Planned with exact sums, so that a retry on other workers (other partition
        // counts) computes the same bits.
        let exact_state;
        let planning: &dyn Session = match session_state
            .as_any()
            .downcast_ref::<datafusion::execution::SessionState>()
        {
            Some(state) => {
                let mut state = state.clone();
                if let Some(c) = state
                    .config_mut()
                    .options_mut()
                    .extensions
                    .get_mut::<crate::la::TesseraConfig>()
                {
                    c.exact_sums = true;
                }
                exact_state = state;
                &exact_state
            }
            None => session_state,
        };
        let distributed = self
            .distributed
            .create_physical_plan(logical_plan, planning)
            .await?;
        let codec = DistributedCodec::new_combined_with_user(session_state.config());
        // EXPLAIN ANALYZE comes back as the library's analyze over a `DistributedExec`.
        fn distributes(plan: &Arc<dyn ExecutionPlan>) -> bool {
            plan.is::<DistributedExec>() || plan.children().into_iter().any(distributes)
        }
        if distributes(&distributed) && Self::stages_travel(&distributed, &codec) {
            Ok(distributed)
        } else {
            Ok(local)
        }
    }
}

#[async_trait]
impl QueryPlanner for DistributedGate {
    async fn create_physical_plan(
        &self,
        logical_plan: &LogicalPlan,
        session_state: &dyn Session,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        // DataFusion plans an EXPLAIN's statement inside its own physical planner, past
        // this one; a statement that would run distributed is shown as it would run:
        // its stages, the tasks of each and the network exchanges between them.
        if let LogicalPlan::Explain(explain) = logical_plan
            && !explain.verbose
        {
            let inner = self.plan(&explain.plan, session_state).await?;
            if inner.is::<DistributedExec>() {
                let mut plans: Vec<StringifiedPlan> = explain
                    .stringified_plans
                    .iter()
                    .filter(|p| !matches!(p.plan_type, PlanType::FinalPhysicalPlan))
                    .cloned()
                    .collect();
                plans.push(StringifiedPlan::new(
                    PlanType::FinalPhysicalPlan,
                    display_plan_ascii(inner.as_ref(), false),
                ));
                return Ok(Arc::new(ExplainExec::new(
                    Arc::clone(explain.schema.inner()),
                    plans,
                    false,
                )));
            }
        }
        self.plan(logical_plan, session_state).await
    }
}

/// Channels to the workers, one per worker shared by every query, with what the
/// library's default channels lack: a connect timeout, so a dead host fails a query in
/// seconds rather than hanging it; HTTP/2 and TCP keepalives, so a worker that stops
/// answering mid-stream is noticed; and lazy reconnection, so a restarted worker is
/// used again without restarting the coordinator.
#[derive(Default)]
struct Channels {
    cache: std::sync::Mutex<std::collections::HashMap<url::Url, BoxCloneSyncChannel>>,
    /// Sent with every request, in [`SECRET_HEADER`]; workers refuse requests without it.
    secret: Option<tonic::codegen::http::HeaderValue>,
    /// Tasks running on each worker for this process (see [`CountTasks`]).
    running: std::sync::Mutex<std::collections::HashMap<url::Url, Arc<AtomicU64>>>,
}

/// The request header that carries the cluster secret to workers.
pub const SECRET_HEADER: &str = "x-tessera-cluster-secret";

impl std::fmt::Debug for Channels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channels").finish_non_exhaustive()
    }
}

/// How long connecting to a worker may take.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(3);
/// How often an idle or busy connection to a worker is pinged, and how long a ping
/// may go unanswered before the connection (and the query using it) fails.
const KEEPALIVE: (std::time::Duration, std::time::Duration) = (
    std::time::Duration::from_secs(5),
    std::time::Duration::from_secs(10),
);

impl Channels {
    fn channel(&self, url: &url::Url) -> Result<BoxCloneSyncChannel> {
        let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(channel) = cache.get(url) {
            return Ok(channel.clone());
        }
        let endpoint = tonic::transport::Endpoint::from_shared(url.to_string())
            .map_err(|e| DataFusionError::Configuration(format!("worker address {url}: {e}")))?
            .connect_timeout(CONNECT_TIMEOUT)
            .http2_keep_alive_interval(KEEPALIVE.0)
            .keep_alive_timeout(KEEPALIVE.1)
            .keep_alive_while_idle(true)
            .tcp_keepalive(Some(KEEPALIVE.0))
            .tcp_nodelay(true);
        let secret = self.secret.clone();
        let channel = BoxCloneSyncChannel::new(CountTasks {
            inner: tower::util::MapRequest::new(
                endpoint.connect_lazy(),
                move |mut request: tonic::codegen::http::Request<tonic::body::Body>| {
                    if let Some(secret) = &secret {
                        request.headers_mut().insert(SECRET_HEADER, secret.clone());
                    }
                    request
                },
            ),
            running: self.running_on(url),
        });
        cache.insert(url.clone(), channel.clone());
        Ok(channel)
    }

    /// The counter of tasks this process runs on the worker at `url`.
    fn running_on(&self, url: &url::Url) -> Arc<AtomicU64> {
        let mut running = self.running.lock().unwrap_or_else(|e| e.into_inner());
        Arc::clone(running.entry(url.clone()).or_default())
    }
}

/// Counts the tasks a coordinator runs on one worker: the library sets up each task
/// with a `CoordinatorChannel` stream that stays open until the statement ends (the
/// task's metrics come back on it last), so a task is counted from that request until
/// its response stream is dropped, whether it ended, failed or was abandoned.
#[derive(Clone)]
struct CountTasks<S> {
    inner: S,
    running: Arc<AtomicU64>,
}

type HttpRequest = tonic::codegen::http::Request<tonic::body::Body>;
type HttpResponse = tonic::codegen::http::Response<tonic::body::Body>;

impl<S> tower::Service<HttpRequest> for CountTasks<S>
where
    S: tower::Service<HttpRequest, Response = HttpResponse>,
    S::Future: Send + 'static,
{
    type Response = HttpResponse;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, std::result::Result<HttpResponse, S::Error>>;

    fn poll_ready(
        &mut self,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::result::Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: HttpRequest) -> Self::Future {
        let task = request
            .uri()
            .path()
            .ends_with("/CoordinatorChannel")
            .then(|| RunningTask::start(&self.running));
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await?;
            Ok(match task {
                Some(task) => {
                    response.map(|body| tonic::body::Body::new(Counted { body, _task: task }))
                }
                None => response,
            })
        })
    }
}

/// One task counted as running until dropped.
struct RunningTask(Arc<AtomicU64>);

impl RunningTask {
    fn start(counter: &Arc<AtomicU64>) -> Self {
        counter.fetch_add(1, Ordering::Relaxed);
        Self(Arc::clone(counter))
    }
}

impl Drop for RunningTask {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// A task's response stream, which keeps the task counted while it is held.
struct Counted {
    body: tonic::body::Body,
    _task: RunningTask,
}

impl http_body::Body for Counted {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<std::result::Result<http_body::Frame<bytes::Bytes>, tonic::Status>>>
    {
        std::pin::Pin::new(&mut self.get_mut().body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

/// The cluster's channels, handed to the distributed planner.
#[derive(Debug, Clone)]
struct SharedChannels(Arc<Channels>);

#[async_trait]
impl ChannelResolver for SharedChannels {
    async fn get_worker_client_for_url(&self, url: &url::Url) -> Result<Box<dyn WorkerChannel>> {
        self.0.channel(url).map(create_worker_client)
    }
}

/// The workers of a coordinator and what the heartbeat last learned of each: a worker
/// answers a `GetWorkerInfo` call every [`HEARTBEAT`], and one that does not within
/// [`CONNECT_TIMEOUT`] is taken out of the plans until it answers again (a restarted
/// worker rejoins by itself). Shared by every session of the process.
#[derive(Debug)]
pub struct Cluster {
    workers: std::sync::Mutex<Vec<WorkerState>>,
    channels: Arc<Channels>,
}

/// One worker as the heartbeat sees it.
#[derive(Debug, Clone)]
pub struct WorkerState {
    /// Where it serves.
    pub url: url::Url,
    /// True when it answered the last heartbeat.
    pub live: bool,
    /// When it last answered.
    pub last_heartbeat: Option<std::time::SystemTime>,
    /// Why it did not answer the last heartbeat, if it did not.
    pub error: Option<String>,
    /// Statements run again on the other workers because this one was lost while they
    /// ran.
    pub statements_retried: u64,
}

/// How often the coordinator asks each worker whether it is alive.
pub const HEARTBEAT: std::time::Duration = std::time::Duration::from_secs(1);

impl Cluster {
    /// The workers at `urls`, all taken as live until the first heartbeat; `secret`
    /// (the cluster's) goes with every request to them.
    pub fn new(urls: Vec<url::Url>, secret: Option<&str>) -> Result<Arc<Self>> {
        let secret = secret_header(secret)?;
        Ok(Arc::new(Self {
            workers: std::sync::Mutex::new(
                urls.into_iter()
                    .map(|url| WorkerState {
                        url,
                        live: true,
                        last_heartbeat: None,
                        error: None,
                        statements_retried: 0,
                    })
                    .collect(),
            ),
            channels: Arc::new(Channels {
                secret,
                ..Channels::default()
            }),
        }))
    }

    /// Starts the heartbeat on the current tokio runtime; it stops once the cluster is
    /// dropped.
    pub fn start_heartbeat(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HEARTBEAT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(cluster) = weak.upgrade() else {
                    return;
                };
                cluster.beat().await;
            }
        });
    }

    /// Asks every worker once, all at the same time.
    pub async fn beat(&self) {
        let urls: Vec<url::Url> = self.states().into_iter().map(|w| w.url).collect();
        let answers = futures::future::join_all(urls.iter().map(|url| async move {
            let mut client = self.channels.channel(url).map(create_worker_client)?;
            match tokio::time::timeout(
                CONNECT_TIMEOUT,
                client.get_worker_info(datafusion_distributed::GetWorkerInfoRequest {}),
            )
            .await
            {
                Ok(answer) => answer.map(|_| ()),
                Err(_) => Err(DataFusionError::External(Box::new(
                    tonic::Status::unavailable(format!(
                        "no answer in {} s",
                        CONNECT_TIMEOUT.as_secs()
                    )),
                ))),
            }
        }))
        .await;
        let now = std::time::SystemTime::now();
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        for (url, answer) in urls.iter().zip(answers) {
            if let Some(w) = workers.iter_mut().find(|w| &w.url == url) {
                match answer {
                    Ok(()) => {
                        w.live = true;
                        w.last_heartbeat = Some(now);
                        w.error = None;
                    }
                    Err(e) => {
                        if w.live {
                            tracing::warn!("worker {url} is down: {e}");
                        }
                        w.live = false;
                        w.error = Some(e.to_string());
                    }
                }
            }
        }
    }

    /// Tasks of this process's running statements on the worker at `url`.
    pub fn running_tasks(&self, url: &url::Url) -> u64 {
        self.channels.running_on(url).load(Ordering::Relaxed)
    }

    /// Every worker, live or not.
    pub fn states(&self) -> Vec<WorkerState> {
        self.workers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// True when one of `used` (the workers a statement was planned on) is not live
    /// now.
    pub fn lost_any(&self, used: &[url::Url]) -> bool {
        self.states()
            .iter()
            .any(|w| !w.live && used.contains(&w.url))
    }

    /// After a statement planned on the workers `used` failed: whether one of them is
    /// lost, asked of the workers at once (which also takes a lost one out of the next
    /// plan).
    pub async fn lost_since(&self, used: &[url::Url]) -> bool {
        self.beat().await;
        self.lost_any(used)
    }

    /// Counts a statement run again because workers of `used` were lost: each of them
    /// that is down now gets it in its `statements_retried`.
    pub fn note_retry(&self, used: &[url::Url]) {
        let mut workers = self.workers.lock().unwrap_or_else(|e| e.into_inner());
        for w in workers
            .iter_mut()
            .filter(|w| !w.live && used.contains(&w.url))
        {
            w.statements_retried += 1;
        }
    }

    /// The workers plans may use now.
    pub fn live(&self) -> Vec<url::Url> {
        self.states()
            .into_iter()
            .filter(|w| w.live)
            .map(|w| w.url)
            .collect()
    }
}

/// `tessera_workers()`: the workers of a coordinator as the heartbeat last saw them,
/// one row each (`address`, `state` live or down, `last_heartbeat`, `error`,
/// `statements_retried`: statements run again because the worker was lost under them;
/// `running_tasks`: tasks of this coordinator's running statements on the worker;
/// `shards_owned`: the shards of the stored matrices of several shards whose scan
/// tasks [`task_owners`] puts on the worker among the live ones now).
#[derive(Debug)]
pub struct WorkersFunction(pub Arc<Cluster>, pub Store);

impl WorkersView {
    /// Shards owned per live worker: shard `k` of a matrix of `s > 1` shards is read by
    /// scan task `k mod t` (`t = min(s, live workers)`), which runs on its owner.
    fn shards_owned(&self, live: &[url::Url]) -> std::collections::HashMap<url::Url, u64> {
        let mut owned = std::collections::HashMap::new();
        for info in self.1.arrays() {
            let shards = info.partitioning.shard_count() as usize;
            let tasks = shards.min(live.len());
            if !info.schema.is_matrix() || shards < 2 || tasks == 0 {
                continue;
            }
            let owners = task_owners(live, tasks);
            for k in 0..shards {
                *owned.entry(owners[k % tasks].clone()).or_insert(0) += 1;
            }
        }
        owned
    }
}

impl datafusion::catalog::TableFunctionImpl for WorkersFunction {
    fn call(
        &self,
        args: &[datafusion::prelude::Expr],
    ) -> Result<Arc<dyn datafusion::catalog::TableProvider>> {
        if !args.is_empty() {
            return datafusion::common::plan_err!("tessera_workers() takes no arguments");
        }
        Ok(Arc::new(WorkersView(Arc::clone(&self.0), self.1.clone())))
    }
}

/// What `tessera_workers()` reads: the workers as they are when a statement runs
/// (a view, so no plan cache keeps one reading for the next statement).
#[derive(Debug)]
struct WorkersView(Arc<Cluster>, Store);

impl WorkersView {
    fn schema() -> datafusion::arrow::datatypes::SchemaRef {
        use datafusion::arrow::datatypes::{DataType, Field, Schema, TimeUnit};
        Arc::new(Schema::new(vec![
            Field::new("address", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new(
                "last_heartbeat",
                DataType::Timestamp(TimeUnit::Millisecond, Some("UTC".into())),
                true,
            ),
            Field::new("error", DataType::Utf8, true),
            Field::new("shards_owned", DataType::UInt64, false),
            Field::new("statements_retried", DataType::UInt64, false),
            Field::new("running_tasks", DataType::UInt64, false),
        ]))
    }

    /// One row per worker, now.
    fn reading(&self) -> Result<datafusion::arrow::record_batch::RecordBatch> {
        use datafusion::arrow::array::{StringArray, TimestampMillisecondArray, UInt64Array};
        let states = self.0.states();
        let owned = self.shards_owned(&self.0.live());
        let millis = |t: &Option<std::time::SystemTime>| {
            t.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map(|d| d.as_millis() as i64)
        };
        Ok(datafusion::arrow::record_batch::RecordBatch::try_new(
            Self::schema(),
            vec![
                Arc::new(StringArray::from_iter_values(
                    states.iter().map(|w| w.url.as_str().trim_end_matches('/')),
                )),
                Arc::new(StringArray::from_iter_values(
                    states.iter().map(|w| if w.live { "live" } else { "down" }),
                )),
                Arc::new(
                    TimestampMillisecondArray::from(
                        states
                            .iter()
                            .map(|w| millis(&w.last_heartbeat))
                            .collect::<Vec<_>>(),
                    )
                    .with_timezone("UTC"),
                ),
                Arc::new(StringArray::from(
                    states.iter().map(|w| w.error.clone()).collect::<Vec<_>>(),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    states
                        .iter()
                        .map(|w| owned.get(&w.url).copied().unwrap_or(0)),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    states.iter().map(|w| w.statements_retried),
                )),
                Arc::new(UInt64Array::from_iter_values(
                    states.iter().map(|w| self.0.running_tasks(&w.url)),
                )),
            ],
        )?)
    }
}

#[async_trait]
impl datafusion::catalog::TableProvider for WorkersView {
    fn schema(&self) -> datafusion::arrow::datatypes::SchemaRef {
        Self::schema()
    }

    fn table_type(&self) -> datafusion::datasource::TableType {
        datafusion::datasource::TableType::View
    }

    async fn scan(
        &self,
        state: &dyn datafusion::catalog::Session,
        projection: Option<&Vec<usize>>,
        filters: &[datafusion::prelude::Expr],
        limit: Option<usize>,
    ) -> Result<Arc<dyn ExecutionPlan>> {
        datafusion::datasource::MemTable::try_new(Self::schema(), vec![vec![self.reading()?]])?
            .scan(state, projection, filters, limit)
            .await
    }
}

/// The worker that runs task `t` of `tasks` of a stage that scans stored matrices,
/// among `live` workers: rendezvous hashing (each task ranks the workers by a hash of
/// worker and task, and takes the first) with a bound of `ceil(tasks / workers)` tasks
/// per worker, so the tasks spread evenly and task `t` (which reads the shards
/// `k % tasks == t`) lands on the same worker query after query while the live set is
/// the same (its blocks stay in that machine's page cache); a lost worker's tasks go
/// to the others.
pub fn task_owners(live: &[url::Url], tasks: usize) -> Vec<url::Url> {
    if live.is_empty() {
        return Vec::new();
    }
    let cap = tasks.div_ceil(live.len());
    let mut load = vec![0usize; live.len()];
    (0..tasks)
        .map(|t| {
            let mut ranked: Vec<usize> = (0..live.len()).collect();
            ranked.sort_by_key(|&w| {
                let mut h = crc32fast::Hasher::new();
                h.update(live[w].as_str().as_bytes());
                h.update(&(t as u64).to_le_bytes());
                (std::cmp::Reverse(h.finalize()), w)
            });
            let w = ranked.into_iter().find(|&w| load[w] < cap).unwrap_or(0);
            load[w] += 1;
            live[w].clone()
        })
        .collect()
}

/// Routes the tasks of every stage that scans stored matrices by [`task_owners`].
#[derive(Debug)]
struct ShardRouting(Arc<Cluster>);

impl RouteTasksHandler for ShardRouting {
    fn handle(&self, ev: RouteTasksEvent<'_>) -> Option<Result<RouteTasksEventResponse>> {
        fn scans(plan: &Arc<dyn ExecutionPlan>) -> bool {
            plan.is::<BlockScanExec>()
                || (!plan.is_network_boundary() && plan.children().into_iter().any(scans))
        }
        if !scans(ev.plan) {
            return None;
        }
        let live = self.0.live();
        if live.is_empty() {
            return None;
        }
        Some(Ok(RouteTasksEventResponse::new(task_owners(
            &live,
            ev.task_count,
        ))))
    }
}

/// The live workers of a [`Cluster`], for the distributed planner.
#[derive(Debug, Clone)]
struct LiveWorkers(Arc<Cluster>);

impl WorkerResolver for LiveWorkers {
    fn get_urls(&self) -> Result<Vec<url::Url>> {
        let live = self.0.live();
        if live.is_empty() {
            return Err(DataFusionError::External(Box::new(
                tonic::Status::unavailable(
                    "no worker is live (see tessera_workers); retry when one is back",
                ),
            )));
        }
        Ok(live)
    }
}

/// Makes a session being built (after [`crate::la::install`]) coordinate the live
/// workers of `cluster`: block dataflows over stored matrices run on them, everything
/// else in this process. `store` is this process's store (decoding happens on workers).
pub fn install(
    builder: SessionStateBuilder,
    store: Store,
    cluster: Arc<Cluster>,
) -> SessionStateBuilder {
    let codec = FlowCodec::new(store);
    let channels = SharedChannels(Arc::clone(&cluster.channels));
    let mut builder = builder;
    // Statements that retry on their own (a distributed `CREATE MATRIX ... AS`) find
    // the cluster in the session's config.
    if let Some(config) = builder.config().as_mut() {
        config.set_extension(Arc::clone(&cluster));
    }
    let mut builder = builder
        .with_query_planner(Arc::new(TesseraQueryPlanner))
        .with_distributed_worker_resolver(LiveWorkers(Arc::clone(&cluster)))
        .with_distributed_route_tasks_handler(ShardRouting(cluster))
        .with_distributed_channel_resolver(channels)
        .with_distributed_user_codec(codec)
        .with_distributed_desired_task_count_handler(scan_tasks)
        .with_distributed_planner();
    let distributed = builder
        .query_planner()
        .take()
        .unwrap_or_else(|| Arc::new(TesseraQueryPlanner));
    builder.with_query_planner(Arc::new(DistributedGate {
        local: Arc::new(TesseraQueryPlanner),
        distributed,
    }))
}

/// The worker service of `tessera worker`: it runs the stages coordinators send,
/// reading stored matrices from `store` (a read-only view of the shared data
/// directory). The stages it runs read their inputs from other workers with `secret`,
/// the cluster's, as coordinators do.
pub fn worker(store: Store, secret: Option<&str>) -> Result<Worker> {
    let channels = Arc::new(Channels {
        secret: secret_header(secret)?,
        ..Channels::default()
    });
    Ok(Worker::from_session_builder(
        move |ctx: WorkerQueryContext| {
            let codec = FlowCodec::new(store.clone());
            let channels = SharedChannels(Arc::clone(&channels));
            async move {
                Ok(ctx
                    .builder
                    .with_distributed_user_codec(codec)
                    .with_distributed_channel_resolver(channels)
                    .build())
            }
        },
    ))
}

/// The secret as the header value requests carry.
fn secret_header(secret: Option<&str>) -> Result<Option<tonic::codegen::http::HeaderValue>> {
    secret
        .map(|s| {
            tonic::codegen::http::HeaderValue::from_str(s).map_err(|_| {
                DataFusionError::Configuration("cluster_secret must be printable ASCII".into())
            })
        })
        .transpose()
}

#[cfg(test)]
mod tests {
    use super::task_owners;

    fn urls(n: usize) -> Vec<url::Url> {
        (0..n)
            .map(|k| url::Url::parse(&format!("http://10.0.0.{k}:7001")).unwrap())
            .collect()
    }

    #[test]
    fn tasks_spread_evenly_and_stay_put() {
        for (workers, tasks) in [(1, 1), (2, 2), (2, 3), (3, 8), (4, 4), (5, 16)] {
            let live = urls(workers);
            let owners = task_owners(&live, tasks);
            assert_eq!(owners.len(), tasks);
            for w in &live {
                let n = owners.iter().filter(|o| *o == w).count();
                assert!(
                    n <= tasks.div_ceil(workers),
                    "{workers} workers, {tasks} tasks: {n} on {w}"
                );
            }
            assert_eq!(task_owners(&live, tasks), owners, "the same every time");
        }
        // A lost worker gets no task.
        let live = urls(4);
        let after = task_owners(&live[1..], 4);
        assert!(!after.contains(&live[0]));
        assert!(task_owners(&[], 3).is_empty());
    }
}
