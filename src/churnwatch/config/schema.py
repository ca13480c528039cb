"""Typed configs: the one copy of each default of the network model, alert-threshold, data and scoring
blocks.

Hydra's ConfigStore holds them as schemas (`register`), and the YAML files build on them
(`defaults: [network_schema, _self_]` in conf/model/lstm.yaml, `thresholds_schema` in
conf/thresholds/default.yaml, `data_schema` in conf/data/*.yaml, `score_schema` in conf/score.yaml), so a
YAML file keeps only what it changes, a misspelt key fails when the config is composed, and a value of the
wrong type fails there too. The code reads the same dataclasses (`typed`) for its defaults, so a model
built from a partial mapping (a test, an old checkpoint) gets the values a composed config would. The
scoring commands' keys carry their help text (`help` in the field's metadata), which `--help` prints.
"""

from dataclasses import MISSING as NO_DEFAULT
from dataclasses import dataclass, field, fields
from typing import Any, TypeVar

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING

from churnwatch.errors import ConfigError

T = TypeVar("T")


@dataclass
class NetConfig:
    """The network: per-event encoder → sequence encoder → pooling → head (models/encoders.py ChurnNet)."""

    encoder: str = "lstm"  # lstm | gru | transformer
    d_model: int = 64  # per-event vector size
    hidden: int = 128  # RNN hidden size
    num_layers: int = 1
    n_heads: int = 4  # transformer only
    dropout: float = 0.1
    pooling: str = "last"  # last (last *real* step) | mean | attention
    head_hidden: int = 64


@dataclass
class LossConfig:
    kind: str = "bce"  # bce | focal
    pos_weight: Any = "auto"  # auto = negatives / positives in training data; or a number; 1 = unweighted
    focal_gamma: float = 2.0
    focal_alpha: float = 0.25


@dataclass
class OptimizerConfig:
    """AdamW."""

    lr: float = 0.002
    weight_decay: float = 0.0001


@dataclass
class SchedulerConfig:
    kind: str = "warmup_cosine"  # warmup_cosine | plateau (on val/auroc) | none
    warmup_steps: int = 50
    patience: int = 2  # plateau
    factor: float = 0.5  # plateau


def _tte_bins() -> list[float]:
    return [0, 1, 3, 7, 14, 21, 30, 45, 60, 90, 120, 180, 270, 365]


@dataclass
class TTEConfig:
    """The dense time-to-event head (models/hazard.py HazardHead): at every step, the hazard of the
    customer's next activity (features/time_to_event.py), censored at the label window."""

    weight: float = 0.0  # 0: off; > 0: multi-task, loss = churn loss + weight * hazard NLL per step
    only: bool = False  # true: the hazard alone; churn = P(no activity within data.horizon_days) from it
    bins: list[float] = field(default_factory=_tte_bins)  # day bins of the piecewise-constant hazard


@dataclass
class NonfiniteConfig:
    """A non-finite training loss: `fail` stops, naming the step and the batch's customers; `skip` takes no
    optimizer step (counted in metrics.json train/skipped_batches) until more than `max_skipped_fraction`
    of an epoch's batches are skipped."""

    action: str = "fail"  # fail | skip
    max_skipped_fraction: float = 0.01


@dataclass
class NetworkModelConfig:
    """`model=lstm|gru|transformer|hybrid`: a sequence network trained with Lightning."""

    name: str = "lstm"  # what metrics.json, ensembles and leaderboards call this model
    kind: str = "network"
    use_aggregates: bool = False  # also feed the aggregate features to the head (hybrid)
    compile: bool = False  # torch.compile the network for training
    net: NetConfig = field(default_factory=NetConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    tte: TTEConfig = field(default_factory=TTEConfig)
    nonfinite: NonfiniteConfig = field(default_factory=NonfiniteConfig)


@dataclass
class ThresholdsConfig:
    """How to pick the operating threshold and the alert tiers (high / medium / low), on (calibrated)
    validation predictions; the choice is stored with the model.

    threshold: `max_f1`, `target_precision` (the lowest threshold whose validation precision reaches
    `target_precision`), `top_fraction` / `top_k` (flag the riskiest share / number of customers), or
    `fixed` (`probability`).
    tiers: capacity rules, `top_fraction` (high = the riskiest `high_fraction`, medium = the next
    `medium_fraction`) or `top_k` (`high_k`, then `medium_k` customers), fill the tiers by rank in every
    scoring run, so the tiers match the team's capacity; `target_precision` (the lowest thresholds reaching
    `high_precision` / `medium_precision` on validation) and `fixed` (`high_probability`,
    `medium_probability`) are probability cut-offs, so tier sizes move with the risk.
    population: customers in a scoring run, to read `top_k` as a share of validation (null: validation's
    own size).
    """

    threshold: str = "max_f1"
    target_precision: float = 0.6
    top_fraction: float = 0.1
    top_k: int = 1000
    probability: float = 0.5
    tiers: str = "top_fraction"
    high_fraction: float = 0.1
    medium_fraction: float = 0.2
    high_k: int = 500
    medium_k: int = 1000
    high_precision: float = 0.7
    medium_precision: float = 0.5
    high_probability: float = 0.6
    medium_probability: float = 0.35
    population: int | None = None


# --- data -------------------------------------------------------------------------------------------------
# Each key of the data block says which concern it belongs to (`concern` in its metadata). The encoded-
# snapshot cache and pretraining key an encoding on what the contract, validation, snapshot and encoding
# keys say, and on nothing else: keys_of(...) derives those sets from here rather than from hand-kept lists.

CONTRACT, VALIDATION, SNAPSHOTS, ENCODING = "contract", "validation", "snapshots", "encoding"
INPUTS, CACHE, LOADING, DRIVERS = "inputs", "cache", "loading", "drivers"
ENCODES = (CONTRACT, VALIDATION, SNAPSHOTS, ENCODING)
"""The concerns whose keys decide what an encoding holds."""


def _key(concern: str, default: Any = None, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"concern": concern})
    return field(default=default, metadata={"concern": concern})


@dataclass
class VisitsConfig:
    """Group event lines into visits, one step each (features/window.py VisitSpec)."""

    key: str | None = None  # a column whose change starts a new visit (order or session id)
    gap_minutes: float | None = None  # and/or a pause longer than this; never across midnight


@dataclass
class VocabConfig:
    min_count: int = 1  # categories seen fewer times in training become the unknown token
    max_size: int | None = None  # keep at most this many per field (null: all)


@dataclass
class CacheConfig:
    """The encoded-snapshot cache (pipeline/cache.py; docs/DATA.md "Encoded-snapshot cache")."""

    enabled: bool = True
    dir: str | None = "${paths.cache_dir}/encoded"
    # full: BLAKE2b of every input byte | sampled: head and tail 8 MiB plus 16 spread 64 KiB blocks (multi-GB
    # inputs; size and mtime_ns still catch ordinary writes)
    content_hash: str = "full"
    # true: store each cached file's BLAKE2b digest and check it on every hit (reads the whole entry, about
    # 1.7 s per GB); sizes and array shapes are always checked
    verify: bool = False
    max_entries: int | None = 20  # least recently used entries beyond this go (null: keep all)


@dataclass
class DataConfig:
    """The `data` block: where the events are, how to read them (the data contract), how to validate them,
    which snapshots to build, how to encode them, the cache, how batches are served and the drivers'
    indicators. docs/DATA.md says what each key means; conf/data/<name>.yaml sets a data set's values."""

    # inputs: paths (their files' identities key the cache, not the paths)
    data_dir: str | None = _key(INPUTS)
    events_path: str = _key(INPUTS, "${.data_dir}/events.parquet")
    customers_path: str | None = _key(INPUTS)
    labels_path: str | None = _key(INPUTS)
    generate: dict[str, Any] | None = _key(INPUTS)  # synthetic data when events_path is missing
    # the data contract: column mapping
    customer_id: str = _key(CONTRACT, "customer_id")
    timestamp: str = _key(CONTRACT, "timestamp")
    timezone: str = _key(CONTRACT, "UTC")  # naive timestamps are in this zone; aware ones are converted to it
    timestamp_format: str | None = _key(CONTRACT)  # null: ISO 8601, then a flexible parser
    categorical: list[str] = _key(CONTRACT, factory=list)
    numeric: list[Any] = _key(CONTRACT, factory=list)  # {name, min, max, fill, transform, visit}
    customers: dict[str, Any] = _key(CONTRACT, factory=dict)  # {categorical, numeric, dates}
    labels: dict[str, str] = _key(CONTRACT, factory=lambda: {"cutoff": "cutoff", "label": "churned"})
    # items (offers): the column naming what a purchase bought, a readable name and a category per item;
    # rows with an item are the purchases the recommender learns from (docs/RECOMMENDATIONS.md)
    item: str | None = _key(CONTRACT)
    item_name: str | None = _key(CONTRACT)
    item_category: str | None = _key(CONTRACT)
    filter: str | None = _key(CONTRACT)  # which rows are events at all (docs/EXPRESSIONS.md)
    derived: dict[str, str] = _key(CONTRACT, factory=dict)  # new columns from expressions
    # validation
    policy: str = _key(VALIDATION, "drop")  # drop (and report counts per reason) | fail (one clear line)
    end_date: str | None = _key(VALIDATION)  # the data's end; later events are "future"
    # snapshots and splits
    horizon_days: int = _key(SNAPSHOTS, 60)  # churn at cutoff c = no event in [c, c + horizon_days)
    label_events: str | None = _key(SNAPSHOTS)  # which events count as activity for the label
    lookback_days: int | None = _key(SNAPSHOTS)  # population: active in the N days before c (null: ever)
    test_cutoff: str | None = _key(SNAPSHOTS)
    train_cutoffs: list[str] | None = _key(SNAPSHOTS)  # explicit dates, or:
    n_snapshots: int = _key(SNAPSHOTS, 1)  # ... this many cutoffs,
    snapshot_every_days: int = _key(SNAPSHOTS, 30)  # ... this far apart,
    last_train_cutoff: str | None = _key(SNAPSHOTS)  # ... ending here (null: test - horizon)
    first_train_cutoff: str | None = _key(SNAPSHOTS)  # or every snapshot_every_days from here
    sample_weight: str = _key(SNAPSHOTS, "none")  # none | customer: a row weighs 1 / (its customer's rows)
    val_fraction: float = _key(SNAPSHOTS, 0.2)  # stratified holdout of training customers
    folds: int | None = _key(SNAPSHOTS)  # k for k-fold CV by customer, with `fold`
    fold: int | None = _key(SNAPSHOTS)
    train_fraction: float | None = _key(SNAPSHOTS)  # keep this share of training customers
    seed: int = _key(SNAPSHOTS, "${seed}")
    # encoding
    max_len: int = _key(ENCODING, 256)  # each customer's last max_len steps (events, or visits)
    max_span_days: float | None = _key(ENCODING)  # and only those of the last N days
    visits: VisitsConfig = _key(ENCODING, factory=VisitsConfig)
    vocab: VocabConfig = _key(ENCODING, factory=VocabConfig)
    aggregates: dict[str, Any] = _key(ENCODING, factory=dict)  # features/aggregates.py AggregateSpec
    # the encoded-snapshot cache
    cache: CacheConfig = _key(CACHE, factory=CacheConfig)
    # serving batches
    batch_size: int = _key(LOADING, 256)
    eval_batch_size: int = _key(LOADING, 1024)
    num_workers: int = _key(LOADING, 0)
    pin_memory: bool = _key(LOADING, False)
    device_gather: Any = _key(LOADING, "auto")  # batches gathered on the GPU: auto (CUDA, if they fit) | bool
    device_gather_fraction: float = _key(LOADING, 0.25)  # auto: only under this share of free GPU memory
    bucket_by_length: bool = _key(LOADING, True)
    pad_multiple: Any = _key(LOADING, "auto")  # widths rounded up to a multiple: auto (GPU 16, CPU 1) | int
    use_aggregates: bool = _key(LOADING, "${oc.select:model.use_aggregates,false}")
    # drivers: business indicators (conf/data/indicators/) and the synthetic ground truth
    indicators: Any = _key(DRIVERS)
    truth_path: str | None = _key(DRIVERS)


def keys_of(*concerns: str) -> frozenset[str]:
    """The data block's keys of these concerns."""
    return frozenset(f.name for f in fields(DataConfig) if f.metadata["concern"] in concerns)


# --- recommender -------------------------------------------------------------------------------------------


def _offer_actions() -> list[str]:
    return ["targeted_offer", "win_back_campaign", "loyalty_reward"]


@dataclass
class RecommenderConfig:
    """`recommender=none|popularity|buy_again|item_knn|als`: next-best offers learned at training time from
    the purchases (`data.item`) before the test cutoff, carried in model.pt and given per scored customer
    as offer_1..offer_<offers> (docs/RECOMMENDATIONS.md)."""

    name: str = "none"  # none: no offers
    params: dict[str, Any] = field(default_factory=dict)  # the model's own (models/recommend/<name>.py)
    offers: int = 3  # offer_1..offer_<offers> score columns
    k: int = 10  # HR@k, recall@k and NDCG@k of the run's backtest
    min_count: int = 2  # items bought fewer times before the cutoff are never offered
    half_life_days: float | None = None  # weigh each purchase by 2^(-its age / half-life) (null: alike)
    exclude_days: float | None = None  # never offer what the customer bought in the last N days
    actions: list[str] = field(default_factory=_offer_actions)  # the playbook actions that carry offers


# --- scoring commands -------------------------------------------------------------------------------------
# Each key's `help` is what `churnwatch <command> --help` prints next to it (cli/app.py command_help).


def _opt(default: Any, help: str, factory: Any = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"help": help})
    return field(default=default, metadata={"help": help})


@dataclass
class DriversConfig:
    """Top drivers per scored customer: integrated gradients for a network, occlusion of each aggregate
    for a tabular model (explain/drivers.py)."""

    enabled: bool = _opt(True, "top drivers per customer (needs a single-network or tabular model)")
    top_n: int = _opt(3, "driver_1..driver_<top_n> columns")
    steps: int = _opt(4, "integrated-gradients steps (Gauss-Legendre), as in training (insights.steps)")
    batch_size: int | None = _opt(
        None, "customers explained at a time; null: 128 on CPU (two batches side by side), 256 on GPU"
    )
    tiers: list[str] | None = _opt(
        None,
        "explain only these risk tiers, e.g. [high, medium] (those that get an action): batch scoring ranks "
        "first, then explains them in a second pass; null: every ranked customer",
    )


@dataclass
class RayConfig:
    """Where and how wide `churnwatch score engine=ray` and `churnwatch prepare engine=ray` run
    (jobs/score_ray.py, jobs/prepare_ray.py; docs/SCORING.md, docs/DATA.md)."""

    address: str | None = _opt(
        None, "the cluster (ray://host:10001, or auto); null: $RAY_ADDRESS, else a local one on this machine"
    )
    workers: int | None = _opt(
        None,
        "scoring actors, each with its own model (prepare: the fewest parts); null: as many as the cluster's "
        "CPUs (and GPUs) allow",
    )
    cpus_per_worker: int = _opt(1, "CPUs (torch threads) each scoring actor or preparing task holds")
    gpus_per_worker: float = _opt(
        0.0, "GPUs each scoring actor holds (device=cuda needs > 0; 0.5: two a GPU)"
    )


@dataclass
class ModelFileConfig:
    """The model file a command loads, and its signature check (docs/RELIABILITY.md)."""

    task_name: str = _opt("churnwatch", "names the run dir")
    model_path: str = _opt(MISSING, "the exported model.pt (a path, or a URL: s3://..., gs://...)")
    verify_key: str | None = _opt(
        "${oc.env:CHURNWATCH_VERIFY_KEY,null}",
        "model_path's signature is checked before loading it, with this public key (Ed25519 PEM) or HMAC "
        "secret file",
    )
    require_signature: bool = _opt(False, "true: refuse a model file that verify_key's key did not sign")


@dataclass
class ScoreConfig(ModelFileConfig):
    """`churnwatch score`: the inputs, the output, and how the job runs (jobs/score.py ScoreJob)."""

    task_name: str = _opt("score", "names the run dir")
    events_path: str = _opt(MISSING, "the event log (parquet or CSV) in the model's data contract")
    output_path: str = _opt(MISSING, "the score file (parquet or CSV by extension), written atomically")
    customers_path: str | None = _opt(None, "customer attributes, if the model was trained with them")
    as_of: str | None = _opt(
        None,
        "events at or after it are ignored (default: the day after the last event; required with num_shards)",
    )
    overwrite: bool = _opt(False, "replace an existing output_path")
    device: str = _opt("auto", "auto | cpu | cuda")
    batch_size: int | None = _opt(
        None, "forward batch; null: 256 on CPU (cache-sized: fastest there), 4096 on GPU"
    )
    precision: str = _opt(
        "fp32", "fp32 (training's probabilities) | bf16 (autocast, where the device has bf16 units) | auto"
    )
    rank_by: str = _opt("probability", "probability | value_at_risk (probability x spend in value_days)")
    value_days: int = _opt(90, "spend window of value_at_risk: one of data.aggregates.windows")
    drivers: DriversConfig = _opt(None, "the driver columns", factory=DriversConfig)
    show_top: int = _opt(10, "print the riskiest N customers")
    # bounded memory: none of these changes the output
    chunk_customers: int = _opt(100_000, "customers encoded and scored at a time (memory)")
    part_events: int = _opt(
        2_000_000,
        "an input with more rows is split into customer-disjoint parts on disk, scored part by part (memory)",
    )
    block_rows: int = _opt(250_000, "output rows ranked and written at a time (memory)")
    spill_dir: str | None = _opt(None, "where the parts go (default: next to the output)")
    num_shards: int | None = _opt(
        None, "N: score only the customers whose id hashes (BLAKE2b) to shard_index, into an unranked part"
    )
    shard_index: int = _opt(0, "this job's shard; churnwatch merge-scores ranks the union of the parts")
    engine: str = _opt(
        "local",
        "local | ray: read a parquet dataset and score it on a Ray cluster into a directory of parquet files "
        "in rank order (needs as_of and the [distributed] extra)",
    )
    ray: RayConfig = _opt(None, "the Ray cluster (engine=ray)", factory=RayConfig)
    playbook: Any = _opt(None, "the retention playbook (group playbook=)", factory=dict)
    paths: Any = _opt(None, "where files go (group paths=)", factory=dict)


@dataclass
class PrepareConfig:
    """`churnwatch prepare`: the data path as a dry run, on this machine or on a Ray cluster (pipeline/,
    jobs/prepare_ray.py; docs/DATA.md)."""

    task_name: str = _opt("prepare", "names the run dir")
    seed: int = _opt(42, "the run's seed (the split's is data.seed)")
    engine: str = _opt(
        "local",
        "local | ray: prepare a parquet dataset on a Ray cluster into the encoded-snapshot cache, where "
        "train finds it (data.cache.dir on a file system every node mounts; the [distributed] extra)",
    )
    part_events: int = _opt(2_000_000, "engine=ray: events per customer-disjoint part (one task's memory)")
    ray: RayConfig = _opt(None, "the Ray cluster (engine=ray)", factory=RayConfig)
    data: Any = _opt(None, "the data config (group data=)", factory=dict)
    paths: Any = _opt(None, "where files go (group paths=)", factory=dict)


@dataclass
class MergeScoresConfig(ModelFileConfig):
    """`churnwatch merge-scores`: rank shard parts as one unsharded run would (scoring/shards.py)."""

    task_name: str = _opt("merge_scores", "names the run dir")
    parts: Any = _opt(MISSING, "a list of part files, or a glob pattern")
    output_path: str = _opt(MISSING, "the ranked score file")
    rank_by: str = _opt(ScoreConfig.rank_by, "must match the parts' run: probability | value_at_risk")
    overwrite: bool = _opt(False, "replace an existing output_path")
    block_rows: int = _opt(ScoreConfig.block_rows, "output rows ranked and written at a time (memory)")
    playbook: Any = _opt(
        None, "the retention playbook (group playbook=): must match the parts' run", factory=dict
    )
    paths: Any = _opt(None, "where files go (group paths=)", factory=dict)


@dataclass
class BatchingConfig:
    """Dynamic micro-batching: requests that arrive together are scored in one pass (serving/batcher.py)."""

    enabled: bool = _opt(True, "false: each request is scored alone, one at a time")
    max_customers: int = _opt(2048, "a batch takes no more requests once it holds this many customers")
    max_wait_ms: float = _opt(2.0, "how long a batch's first request waits for others to join it (ms)")


@dataclass
class LimitsConfig:
    """What one request may hold: more is refused with 413 before any work (serving/requests.py)."""

    max_body_mb: float = _opt(64.0, "request body size (MiB)")
    max_rows: int = _opt(1_000_000, "event rows (plus customer rows) per request")
    max_customers: int = _opt(100_000, "distinct customers per request")


@dataclass
class ServeConfig(ModelFileConfig):
    """`churnwatch serve`: the real-time scoring service over HTTP (serving/app.py)."""

    task_name: str = _opt("serve", "names the run dir")
    host: str = _opt("127.0.0.1", "the address to listen on (0.0.0.0: every interface, e.g. in a container)")
    port: int = _opt(8000, "the TCP port (0: any free port, printed at start)")
    workers: int = _opt(1, "processes, each with its own copy of the model and its own batcher")
    device: str = _opt(ScoreConfig.device, "auto | cpu | cuda")
    batch_size: int | None = _opt(ScoreConfig.batch_size, "forward batch; null: 256 on CPU, 4096 on GPU")
    precision: str = _opt(ScoreConfig.precision, "fp32 | bf16 | auto (as in churnwatch score)")
    rank_by: str = _opt(ScoreConfig.rank_by, "probability | value_at_risk: the order of a request's rows")
    value_days: int = _opt(ScoreConfig.value_days, "spend window of value_at_risk")
    drivers: DriversConfig = _opt(
        None, "the driver columns (a request can leave them out: drivers=false)", factory=DriversConfig
    )
    batching: BatchingConfig = _opt(None, "micro-batching of concurrent requests", factory=BatchingConfig)
    limits: LimitsConfig = _opt(None, "the largest request accepted", factory=LimitsConfig)
    reload_seconds: float = _opt(
        2.0, "how often model_path is checked for a new file (0: never; POST /v1/reload checks at once)"
    )
    log_level: str = _opt("info", "the server's log level: debug | info | warning | error")
    playbook: Any = _opt(None, "the retention playbook (group playbook=)", factory=dict)
    paths: Any = _opt(None, "where files go (group paths=)", factory=dict)


def help_of(cls: type, name: str) -> str | None:
    """A key's help text, for `--help`."""
    found = {f.name: f for f in fields(cls)}.get(name)
    return found.metadata.get("help") if found is not None else None


def default_of(cls: type, name: str) -> Any:
    """A key's default as the YAML would write it (a nested schema: its own defaults)."""
    f = {f.name: f for f in fields(cls)}[name]
    return f.default_factory() if f.default_factory is not NO_DEFAULT else f.default


SCHEMAS = {
    ("model", "network_schema"): NetworkModelConfig,
    ("thresholds", "thresholds_schema"): ThresholdsConfig,
    ("data", "data_schema"): DataConfig,
    ("recommender", "recommender_schema"): RecommenderConfig,
    (None, "score_schema"): ScoreConfig,
    (None, "prepare_schema"): PrepareConfig,
    (None, "merge_scores_schema"): MergeScoresConfig,
    (None, "serve_schema"): ServeConfig,
}
"""(group, name) → schema; a group of None: a command's whole (primary) config."""


def register() -> None:
    """Put the schemas in Hydra's ConfigStore, where the YAML files' defaults lists find them."""
    store = ConfigStore.instance()
    for (group, name), node in SCHEMAS.items():
        store.store(group=group, name=name, node=node)


PRIMARY = {name: node for (group, name), node in SCHEMAS.items() if group is None}
"""The schemas a command's whole config builds on, by name."""


def primary_schema(defaults: list[Any]) -> type | None:
    """The schema a command's config builds on (`- score_schema` in its defaults list), if any."""
    return next((PRIMARY[d] for d in defaults if isinstance(d, str) and d in PRIMARY), None)


def typed(cls: type[T], values: Any, where: str) -> T:
    """`cls` from a (partial) mapping, the rest from its defaults; an unknown key is a ConfigError."""
    values = dict(values or {})
    known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - known)
    if unknown:
        raise ConfigError(f"{where}: unknown keys {unknown}; known: {sorted(known)}")
    return cls(**values)
