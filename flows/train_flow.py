"""TrainFlow: prepare CelebA-format data, train a multi-label ViT, evaluate it, version it all.

    python flows/train_flow.py run                                    # embedded default, CPU
    python flows/train_flow.py --config config flows/configs/smoke.json run
    python flows/train_flow.py run --data /path/to/celeba             # any CelebA-format folder
    python flows/train_flow.py resume --origin-run-id <run id>        # after a failure

Each step reads artifacts, calls lib, and stores artifacts; the logic lives in lib/. Steps
import lib inside their bodies: this module is imported by every task and card subprocess,
and importing torch at the top would add seconds to each of them.
"""

from metaflow import Config, FlowSpec, Parameter, card, current, resources, retry, step, timeout

import lib  # noqa: F401  (light: puts lib/ into the code package that remote steps run from)
from lib.config import DEFAULT, RunConfig, parse


class TrainFlow(FlowSpec):
    """Train, evaluate and version a 40-attribute CelebA ViT."""

    # Validated when the flow starts (run, resume, check): unknown keys and wrong types stop it.
    config = Config("config", default=str(DEFAULT), parser=parse)
    data = Parameter("data", default="", help="CelebA-format folder; overrides config data.source")

    @step
    def start(self):
        """Index and fingerprint the data, and fan out over the shards left to decode."""
        from lib.prepare import plan
        from lib.sources import resolve_source

        config = self.run_config()
        data = config.data
        source, root = resolve_source(self.data or data.source, data.synthetic.model_dump())
        self.plan = plan(source, root, config.model.image_size, data.shard_size)
        # A foreach needs one item at least: a complete cache gets one task with nothing to do.
        self.shards = self.plan.todo or [None]
        self.next(self.prepare_shard, foreach="shards")

    @step
    def prepare_shard(self):
        """Decode one shard's images into the cache (a task per shard: locally up to
        --max-workers at once, one pod each with --with kubernetes or --with batch)."""
        from lib.prepare import prepare_shard
        from lib.sources import shard_source

        if self.input is not None:
            data = self.run_config().data
            source = self.data or data.source
            root = shard_source(self.plan, self.input, source, data.synthetic.model_dump())
            prepare_shard(self.plan, self.input, root)
        self.next(self.prepare_data)

    @card(type="blank")
    @step
    def prepare_data(self, inputs):
        """Join the shards: the manifest becomes the `dataset` artifact."""
        self.join_shards(inputs)
        self.next(self.train)

    def run_config(self) -> RunConfig:
        """The config's typed keys (lib/config.py says what each means)."""
        return RunConfig.of(self.config)

    def join_shards(self, inputs):
        from lib.cards import dataset_summary
        from lib.prepare import finish

        self.dataset = finish(inputs[0].plan, self.run_config().data.allow_skipped)
        current.card.extend(dataset_summary(self.dataset))

    @resources(cpu=config.resources.cpu, memory=config.resources.memory, gpu=config.resources.gpu)
    @retry(times=config.retries)
    @timeout(hours=config.timeout_hours)
    @card(type="blank", refresh_interval=5)
    @step
    def train(self):
        self.train_model()
        self.next(self.evaluate)

    def train_model(self, launch=None):
        """Train and store `model`, `history`, `resumed_from_step` and `world_size`. With
        `launch`, this task is one node of a multi-node job (TrainMultiNodeFlow), and only the
        node that holds global rank 0 has a result to store."""
        from lib.cards import TrainingCard
        from lib.distributed import run_training
        from lib.model import model_to_files, preprocessing_of

        run = (current.flow_name, current.run_id, current.origin_run_id)
        card = TrainingCard(current.card)
        config = self.run_config()
        result = run_training(config, self.dataset, run, current.retry_count, card, launch)
        if result is None:
            return
        card.finish(result.steps, result.resumed_from_step)
        self.model = model_to_files(result.model, preprocessing_of(config.model))
        self.history = result.history
        self.resumed_from_step = result.resumed_from_step
        self.world_size = result.world_size

    @resources(cpu=config.resources.cpu, memory=config.resources.memory, gpu=config.resources.gpu)
    @card(type="blank")
    @step
    def evaluate(self):
        """Calibrate each attribute's probabilities and tune its threshold on validation,
        score the test split on calibrated probabilities, and store `calibration`,
        `thresholds`, `metrics`, `projection` and `reference_features`."""
        from lib import synthetic
        from lib.evaluate import evaluate_model
        from lib.faults import inject
        from lib.model import device_for_inference, load_model

        inject("evaluate", attempt=current.retry_count)
        model, preprocessing = load_model(self.model, device_for_inference())
        synthetic_data = self.dataset["source"].startswith("synthetic://")
        drawn = synthetic.DRAWN_ATTRIBUTES if synthetic_data else None
        settings = self.run_config().evaluate
        result = evaluate_model(model, preprocessing, self.dataset, settings, drawn)
        self.thresholds, self.metrics = result.thresholds, result.metrics
        self.calibration = result.calibration
        self.projection, self.reference_features = result.projection, result.reference_features
        current.card.extend(result.card)
        self.next(self.end)

    @step
    def end(self):
        from lib.registry import headline, promote_if_better

        run = f"{current.flow_name}/{current.run_id}"
        self.champion, reason = promote_if_better(run, self.dataset, self.metrics)
        print(f"{headline(self.metrics)}; {reason}")
        if not self.metrics["beats_baseline"] and self.run_config().require_beats_baseline:
            raise RuntimeError(
                "The model does not beat the majority-class baseline on the test split: it has "
                "probably collapsed. Its artifacts are kept; see the evaluate card."
            )


if __name__ == "__main__":
    TrainFlow()
