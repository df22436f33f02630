"""Recipes: which steps run, in what order, with which thresholds (YAML).

Owns the default recipe (default_recipe.yaml, every threshold named and commented), reading a
user's recipe, and turning it into step objects. Every mistake in a recipe — bad YAML, an
unknown step or parameter, a per-document step after a corpus-wide one — is a `RecipeError`
naming the file and line. The LLM steps (`quality`, `llm_filter`) are off unless a model is named
(`--llm-filter MODEL`, or `model:` in the recipe): `with_llm_model` drops them otherwise. Knows
nothing about executors or files other than the recipe.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from luodi.corpus.dedup import ExactDedup, NearDedup
from luodi.corpus.keywords import Keywords
from luodi.corpus.language import LanguageId
from luodi.corpus.lines import C4Lines
from luodi.corpus.llm_filter import LLMFilter
from luodi.corpus.normalize import Normalize
from luodi.corpus.pii import MaskPII
from luodi.corpus.quality import Quality
from luodi.corpus.rules import GopherQuality, GopherRepetition, Length, Markup, Ratios
from luodi.errors import LuodiError

DOCUMENT_STEPS: dict[str, type] = {cls.name: cls for cls in (
    Normalize, LanguageId, Length, GopherQuality, GopherRepetition, C4Lines, Ratios, Markup, Keywords, MaskPII, Quality)}
CORPUS_STEPS: dict[str, type] = {cls.name: cls for cls in (ExactDedup, NearDedup)}
# run once on the kept output of the corpus-wide steps (percentiles over the survivors)
FINAL_STEPS: dict[str, type] = {cls.name: cls for cls in (LLMFilter,)}
LLM_STEPS = (Quality.name, LLMFilter.name)
SETTINGS = ("text_field", "id_field", "shard_size", "sample_rejects", "steps")


class RecipeError(LuodiError):
    """A recipe that cannot be read or names a step or parameter Luodi does not have."""


@dataclass(frozen=True, slots=True)
class StepSpec:
    name: str
    params: dict[str, Any]


@dataclass(frozen=True, slots=True)
class Recipe:
    """A parsed recipe: settings and the steps in order (per-document ones, corpus-wide ones, then
    the final ones over the kept output)."""

    document_steps: tuple[StepSpec, ...]
    corpus_steps: tuple[StepSpec, ...]
    final_steps: tuple[StepSpec, ...] = ()
    text_field: str = "text"
    id_field: str = "id"
    shard_size: int = 1000
    sample_rejects: int = 5

    def build_document_steps(self) -> list[Any]:
        return [DOCUMENT_STEPS[s.name](**s.params) for s in self.document_steps]

    def build_corpus_steps(self) -> list[Any]:
        return [CORPUS_STEPS[s.name](**s.params) for s in self.corpus_steps]

    def build_final_steps(self) -> list[Any]:
        return [FINAL_STEPS[s.name](**s.params) for s in self.final_steps]

    def with_step_params(self, name: str, **params: Any) -> Recipe:
        """The recipe with `params` set on the step called `name`."""
        def update(specs: tuple[StepSpec, ...]) -> tuple[StepSpec, ...]:
            return tuple(StepSpec(s.name, {**s.params, **params}) if s.name == name else s for s in specs)

        return dataclasses.replace(self, document_steps=update(self.document_steps),
                                   corpus_steps=update(self.corpus_steps), final_steps=update(self.final_steps))

    def with_llm_model(self, model: str | None) -> Recipe:
        """The LLM steps run with `model` (None: with the model the recipe names); those left without
        a model are dropped: the default funnel stays LLM-free."""
        recipe = self
        for name in LLM_STEPS if model else ():
            recipe = recipe.with_step_params(name, model=model)

        def active(specs: tuple[StepSpec, ...]) -> tuple[StepSpec, ...]:
            return tuple(s for s in specs if s.name not in LLM_STEPS or s.params.get("model"))

        return dataclasses.replace(recipe, document_steps=active(recipe.document_steps),
                                   final_steps=active(recipe.final_steps))

    def with_languages(self, languages: tuple[str, ...]) -> Recipe:
        steps = tuple(StepSpec(s.name, {**s.params, "languages": tuple(languages)}) if s.name == "language" else s
                      for s in self.document_steps)
        return dataclasses.replace(self, document_steps=steps)

    def fingerprint(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def default_recipe_text() -> str:
    return resources.files("luodi.corpus").joinpath("default_recipe.yaml").read_text(encoding="utf-8")


def load_recipe(path: Path | None) -> Recipe:
    """The recipe at `path`, or the default one."""
    if path is None:
        return parse_recipe(default_recipe_text(), "default recipe")
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc}); check the path, or print the "
                          "default with `luodi corpus recipe`") from exc
    return parse_recipe(text, str(path))


def parse_recipe(text: str, source: str) -> Recipe:
    try:
        data, root = yaml.safe_load(text), yaml.compose(text)
    except yaml.YAMLError as exc:
        raise RecipeError(f"{source}: not valid YAML ({_first_line(exc)}); fix the recipe") from exc
    if not isinstance(data, dict):
        raise RecipeError(f"{source}: a recipe is a mapping with a 'steps' list; see `luodi corpus recipe`")
    for key in data:
        if key not in SETTINGS:
            raise RecipeError(f"{source}:{_line(root, key)}: unknown setting {key!r}; allowed: {', '.join(SETTINGS)}")
    steps = data.get("steps")
    if not isinstance(steps, list) or not steps:
        raise RecipeError(f"{source}: 'steps' must be a non-empty list; see `luodi corpus recipe`")
    step_nodes = _child(root, "steps").value
    specs = [_step_spec(item, f"{source}:{node.start_mark.line + 1}") for item, node in zip(steps, step_nodes)]
    settings = {k: v for k, v in data.items() if k != "steps"}
    return _split(specs, settings, source, step_nodes)


def _step_spec(item: Any, where: str) -> StepSpec:
    name, params = (item, {}) if isinstance(item, str) else (next(iter(item)), next(iter(item.values())))
    if isinstance(item, dict) and len(item) != 1:
        raise RecipeError(f"{where}: a step is one name with its parameters, got {sorted(item)}")
    known = DOCUMENT_STEPS | CORPUS_STEPS | FINAL_STEPS
    if name not in known:
        raise RecipeError(f"{where}: unknown step {name!r}; known steps: {', '.join(known)}")
    params = params or {}
    if not isinstance(params, dict):
        raise RecipeError(f"{where}: the parameters of {name!r} must be a mapping")
    allowed = {f.name for f in dataclasses.fields(known[name]) if not f.name.startswith("_")}
    for key in params:
        if key not in allowed:
            raise RecipeError(f"{where}: step {name!r} has no parameter {key!r}; "
                              f"allowed: {', '.join(sorted(allowed)) or 'none'}")
    # lists become tuples: steps are frozen, and a recipe equals its defaults whichever way it is written
    return StepSpec(name, {k: tuple(v) if isinstance(v, list) else v for k, v in params.items()})


def _split(specs: list[StepSpec], settings: dict[str, Any], source: str, nodes: list[Any]) -> Recipe:
    seen_corpus = seen_final = False
    for spec, node in zip(specs, nodes):
        where = f"{source}:{node.start_mark.line + 1}: step {spec.name!r}"
        if spec.name in FINAL_STEPS:
            seen_final = True
        elif seen_final:
            raise RecipeError(f"{where} must come before the steps over the kept output ({', '.join(FINAL_STEPS)})")
        elif spec.name in CORPUS_STEPS:
            seen_corpus = True
        elif seen_corpus:
            raise RecipeError(f"{where} works per document and "
                              "must come before the corpus-wide steps (exact_dedup, near_dedup)")
    recipe = Recipe(tuple(s for s in specs if s.name in DOCUMENT_STEPS),
                    tuple(s for s in specs if s.name in CORPUS_STEPS),
                    tuple(s for s in specs if s.name in FINAL_STEPS), **settings)
    try:  # every step built once here, so a bad value fails now and names the recipe
        recipe.build_document_steps(), recipe.build_corpus_steps(), recipe.build_final_steps()
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"{source}: {exc}; fix the recipe") from exc
    return recipe


def _child(node: Any, key: str) -> Any:
    return next(v for k, v in node.value if k.value == key)


def _line(root: Any, key: str) -> int:
    return next(k.start_mark.line + 1 for k, _ in root.value if k.value == key)


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
