"""The model registry: families -> models, read from a TOML data file.

The file (setting ``models``, default ``backend/models.toml``) is data, not
code. Each model has three tables:

* ``backend``: ``repository`` (a Hugging Face repository or a local folder;
  ``{models_dir}`` expands to the models folder), optional ``adapter``,
  ``aliases``, ``public_api``, ``dht_prefix``, ``embedded`` (served by the
  local swarm that the app can start by itself);
* ``frontend``: ``name``, ``model_card``, ``license``;
* ``chat``: ``max_session_length``, ``sep_token``, ``stop_token``,
  ``extra_stop_sequences``, ``system_prompt``, ``use_chat_template``,
  ``generation_params`` and ``presets`` (named sets of generation parameters and
  optionally a ``system_prompt``, offered by the chat page).

:meth:`Registry.to_json` is the body of ``GET /api/v1/models``.
"""

from __future__ import annotations

import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


class RegistryError(ValueError):
    """The registry file is malformed; the message names the file and the entry."""


_ALLOWED_GEN_PARAMS = {"do_sample", "temperature", "top_k", "top_p", "repetition_penalty", "max_new_tokens"}


@dataclass(frozen=True)
class ChatSettings:
    max_session_length: int = 8192
    sep_token: str = "###"
    stop_token: str = "###"
    extra_stop_sequences: list[str] = field(default_factory=lambda: ["</s>"])
    system_prompt: str = ""
    use_chat_template: bool = False
    generation_params: dict[str, Any] = field(
        default_factory=lambda: {"do_sample": 1, "temperature": 0.6, "top_p": 0.9})
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)  # name -> parameters (+ system_prompt)


@dataclass(frozen=True)
class ModelSpec:
    key: str
    family: str
    repository: str
    name: str
    model_card: str = ""
    license: str = ""
    adapter: str = ""
    aliases: tuple[str, ...] = ()
    public_api: bool = True
    dht_prefix: str = ""
    embedded: bool = False
    chat: ChatSettings = field(default_factory=ChatSettings)

    def describe(self, *, ready: bool, chat_template: str | None = None, error: str | None = None) -> dict[str, Any]:
        """The entry of this model in ``GET /api/v1/models``."""
        chat = asdict(self.chat)
        chat["chat_template"] = chat_template if self.chat.use_chat_template else None
        out = {
            "key": self.key,
            "aliases": list(self.aliases),
            "family": self.family,
            "name": self.name,
            "model_card": self.model_card,
            "license": self.license,
            "public_api": self.public_api,
            "chat": chat,
            "ready": ready,
        }
        if error:
            out["error"] = error
        return out


@dataclass(frozen=True)
class Registry:
    models: tuple[ModelSpec, ...]
    default: str
    default_embedded: str

    def lookup(self, name: str) -> ModelSpec | None:
        """Find a model by key, alias or adapter repository."""
        for spec in self.models:
            if name == spec.key or name in spec.aliases or (spec.adapter and name == spec.adapter):
                return spec
        return None

    def subset(self, *, embedded: bool) -> Registry:
        """The models served in this mode: embedded-only with the local swarm, all otherwise."""
        if not embedded:
            return self
        chosen = tuple(m for m in self.models if m.embedded)
        return Registry(models=chosen, default=self.default_embedded or (chosen[0].key if chosen else ""),
                        default_embedded=self.default_embedded)


    def only(self, names: list[str]) -> Registry:
        """The models named by ``names`` (keys or aliases), in registry order; RegistryError names an unknown one."""
        if not names:
            return self
        chosen: set[str] = set()
        for name in names:
            spec = self.lookup(name)
            if spec is None:
                raise RegistryError(f"{name!r} is not in the registry (known: {', '.join(m.key for m in self.models)})")
            chosen.add(spec.key)
        models = tuple(m for m in self.models if m.key in chosen)
        default = self.default if self.default in chosen else models[0].key
        embedded_default = self.default_embedded if self.default_embedded in chosen else ""
        return Registry(models=models, default=default, default_embedded=embedded_default)


def _require(table: dict, key: str, where: str, kind: type) -> Any:
    if key not in table:
        raise RegistryError(f"{where}: missing '{key}'")
    value = table[key]
    if not isinstance(value, kind):
        raise RegistryError(f"{where}: '{key}' must be a {kind.__name__}")
    return value


def _chat_settings(table: dict, where: str) -> ChatSettings:
    known = {f for f in ChatSettings.__dataclass_fields__}
    unknown = set(table) - known
    if unknown:
        raise RegistryError(f"{where}.chat: unknown field(s) {', '.join(sorted(unknown))}")
    params = table.get("generation_params", None)
    if params is not None:
        bad = set(params) - _ALLOWED_GEN_PARAMS
        if bad:
            raise RegistryError(f"{where}.chat.generation_params: unknown parameter(s) {', '.join(sorted(bad))}")
    presets = table.get("presets", {})
    if not isinstance(presets, dict) or not all(isinstance(p, dict) for p in presets.values()):
        raise RegistryError(f"{where}.chat.presets: must be a table of tables (name -> parameters)")
    for name, preset in presets.items():
        bad = set(preset) - _ALLOWED_GEN_PARAMS - {"system_prompt"}
        if bad:
            raise RegistryError(f"{where}.chat.presets.{name}: unknown parameter(s) {', '.join(sorted(bad))}")
    chat = ChatSettings(**table)
    if not isinstance(chat.max_session_length, int) or chat.max_session_length < 1:
        raise RegistryError(f"{where}.chat: max_session_length must be a positive integer")
    return chat


def load_registry(path: Path, models_dir: Path) -> Registry:
    """Read and validate the registry file."""
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise RegistryError(f"cannot read model registry {path}: {e}") from None

    models: list[ModelSpec] = []
    for fam_index, family in enumerate(data.get("families", [])):
        fam_name = _require(family, "name", f"{path}: families[{fam_index}]", str)
        for model_index, entry in enumerate(family.get("models", [])):
            where = f"{path}: {fam_name}.models[{model_index}]"
            key = _require(entry, "key", where, str)
            where = f"{path}: model {key!r}"
            backend = _require(entry, "backend", where, dict)
            frontend = entry.get("frontend", {})
            repository = _require(backend, "repository", where + ".backend", str)
            repository = repository.replace("{models_dir}", str(models_dir))
            models.append(ModelSpec(
                key=key,
                family=fam_name,
                repository=repository,
                name=frontend.get("name", key),
                model_card=frontend.get("model_card", ""),
                license=frontend.get("license", ""),
                adapter=backend.get("adapter", ""),
                aliases=tuple(backend.get("aliases", ())),
                public_api=bool(backend.get("public_api", True)),
                dht_prefix=backend.get("dht_prefix", ""),
                embedded=bool(backend.get("embedded", False)),
                chat=_chat_settings(entry.get("chat", {}), where),
            ))
    if not models:
        raise RegistryError(f"{path}: no models defined")

    seen: dict[str, str] = {}
    for spec in models:
        for name in (spec.key, *spec.aliases):
            if name in seen:
                raise RegistryError(f"{path}: name {name!r} used by both {seen[name]!r} and {spec.key!r}")
            seen[name] = spec.key

    default = data.get("default", models[0].key)
    default_embedded = data.get("default_embedded", "")
    for label, value in (("default", default), ("default_embedded", default_embedded)):
        if value and value not in seen:
            raise RegistryError(f"{path}: {label} model {value!r} is not defined")
    return Registry(models=tuple(models), default=seen[default], default_embedded=seen.get(default_embedded, ""))
