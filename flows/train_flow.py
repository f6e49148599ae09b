"""TrainFlow: prepare CelebA-format data, train a multi-label ViT, evaluate it, version it all.

    python flows/train_flow.py run                                    # embedded default, CPU
    python flows/train_flow.py --config config flows/configs/smoke.json run
    python flows/train_flow.py run --data /path/to/celeba             # any CelebA-format folder
    python flows/train_flow.py resume --origin-run-id <run id>        # after a failure

Each step reads artifacts, calls lib, and stores artifacts; the logic lives in lib/. Steps
import lib inside their bodies: this module is imported by every task and card subprocess,
and importing torch at the top would add seconds to each of them.
"""

import os

from metaflow import Config, FlowSpec, Parameter, card, current, resources, retry, step, timeout

import lib  # noqa: F401  (light: puts lib/ into the code package that remote steps run from)

CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs")


class TrainFlow(FlowSpec):
    """Train, evaluate and version a 40-attribute CelebA ViT."""

    config = Config("config", default=os.path.join(CONFIGS, "default.json"))
    data = Parameter("data", default="", help="CelebA-format folder; overrides config data.source")

    @step
    def start(self):
        self.next(self.prepare_data)

    @card(type="blank")
    @step
    def prepare_data(self):
        from lib.cards import dataset_summary
        from lib.data import prepare, resolve_source

        data = self.config.data
        source, root = resolve_source(self.data or data.source, data.get("synthetic"))
        self.dataset = prepare(source, root, self.config.model.image_size, data.allow_skipped)
        current.card.extend(dataset_summary(self.dataset))
        self.next(self.train)

    @resources(cpu=config.resources.cpu, memory=config.resources.memory, gpu=config.resources.gpu)
    @retry(times=config.retries)
    @timeout(hours=config.timeout_hours)
    @card(type="blank", refresh_interval=5)
    @step
    def train(self):
        from lib.cards import TrainingCard
        from lib.faults import inject
        from lib.model import model_to_files, preprocessing_of
        from lib.storage import checkpoint_places
        from lib.train import train

        places = checkpoint_places(current.flow_name, current.run_id, current.origin_run_id)
        card = TrainingCard(current.card)
        result = train(
            self.config,
            self.dataset,
            checkpoints=places[0],
            resume_from=places,
            on_log=card,
            on_step=lambda step: inject("train", step, current.retry_count),
        )
        card.finish(result.steps, result.resumed_from_step)
        self.model = model_to_files(result.model, preprocessing_of(self.config.model))
        self.history = result.history
        self.resumed_from_step = result.resumed_from_step
        self.next(self.evaluate)

    @resources(cpu=config.resources.cpu, memory=config.resources.memory, gpu=config.resources.gpu)
    @card(type="blank")
    @step
    def evaluate(self):
        from lib import synthetic
        from lib.evaluate import evaluate_model
        from lib.faults import inject
        from lib.model import device_for_inference, load_model

        inject("evaluate", attempt=current.retry_count)
        model, preprocessing = load_model(self.model, device_for_inference())
        synthetic_data = self.dataset["source"].startswith("synthetic://")
        drawn = synthetic.DRAWN_ATTRIBUTES if synthetic_data else None
        result = evaluate_model(model, preprocessing, self.dataset, self.config, drawn)
        self.thresholds, self.metrics = result.thresholds, result.metrics
        self.projection, self.reference_features = result.projection, result.reference_features
        current.card.extend(result.card)
        self.next(self.end)

    @step
    def end(self):
        from lib.evaluate import headline
        from lib.registry import promote_if_better

        run = f"{current.flow_name}/{current.run_id}"
        self.champion, reason = promote_if_better(run, self.dataset, self.metrics)
        print(f"{headline(self.metrics)}; {reason}")
        if not self.metrics["beats_baseline"] and self.config.require_beats_baseline:
            raise RuntimeError(
                "The model does not beat the majority-class baseline on the test split: it has "
                "probably collapsed. Its artifacts are kept; see the evaluate card."
            )


if __name__ == "__main__":
    TrainFlow()
