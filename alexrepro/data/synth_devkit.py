"""The classes of a synth tree and the devkit's meta.mat describing them, as the real devkit writes it.

Real ImageNet WNIDs and words come first (the first 50 ILSVRC-2012 classes), then made-up ones; meta.mat
is the devkit's `synsets` struct array, leaves in devkit-ID order, with inner nodes above them.
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np
import scipy.io

from alexrepro.data.synth_images import class_family

# The first 50 ILSVRC-2012 classes in sorted-WNID order, with the devkit's words.
REAL_SYNSETS = (
    ("n01440764", "tench, Tinca tinca"),
    ("n01443537", "goldfish, Carassius auratus"),
    ("n01484850", "great white shark, white shark, man-eater, man-eating shark, Carcharodon carcharias"),
    ("n01491361", "tiger shark, Galeocerdo cuvieri"),
    ("n01494475", "hammerhead, hammerhead shark"),
    ("n01496331", "electric ray, crampfish, numbfish, torpedo"),
    ("n01498041", "stingray"),
    ("n01514668", "cock"),
    ("n01514859", "hen"),
    ("n01518878", "ostrich, Struthio camelus"),
    ("n01530575", "brambling, Fringilla montifringilla"),
    ("n01531178", "goldfinch, Carduelis carduelis"),
    ("n01532829", "house finch, linnet, Carpodacus mexicanus"),
    ("n01534433", "junco, snowbird"),
    ("n01537544", "indigo bunting, indigo finch, indigo bird, Passerina cyanea"),
    ("n01558993", "robin, American robin, Turdus migratorius"),
    ("n01560419", "bulbul"),
    ("n01580077", "jay"),
    ("n01582220", "magpie"),
    ("n01592084", "chickadee"),
    ("n01601694", "water ouzel, dipper"),
    ("n01608432", "kite"),
    ("n01614925", "bald eagle, American eagle, Haliaeetus leucocephalus"),
    ("n01616318", "vulture"),
    ("n01622779", "great grey owl, great gray owl, Strix nebulosa"),
    ("n01629819", "European fire salamander, Salamandra salamandra"),
    ("n01630670", "common newt, Triturus vulgaris"),
    ("n01631663", "eft"),
    ("n01632458", "spotted salamander, Ambystoma maculatum"),
    ("n01632777", "axolotl, mud puppy, Ambystoma mexicanum"),
    ("n01641577", "bullfrog, Rana catesbeiana"),
    ("n01644373", "tree frog, tree-frog"),
    ("n01644900", "tailed frog, bell toad, ribbed toad, tailed toad, Ascaphus trui"),
    ("n01664065", "loggerhead, loggerhead turtle, Caretta caretta"),
    ("n01665541", "leatherback turtle, leatherback, leathery turtle, Dermochelys coriacea"),
    ("n01667114", "mud turtle"),
    ("n01667778", "terrapin"),
    ("n01669191", "box turtle, box tortoise"),
    ("n01675722", "banded gecko"),
    ("n01677366", "common iguana, iguana, Iguana iguana"),
    ("n01682714", "American chameleon, anole, Anolis carolinensis"),
    ("n01685808", "whiptail, whiptail lizard"),
    ("n01687978", "agama"),
    ("n01688243", "frilled lizard, Chlamydosaurus kingi"),
    ("n01689811", "alligator lizard"),
    ("n01692333", "Gila monster, Heloderma suspectum"),
    ("n01693334", "green lizard, Lacerta viridis"),
    ("n01694178", "African chameleon, Chamaeleo chamaeleon"),
    ("n01695060", "Komodo dragon, Komodo lizard, dragon lizard, giant lizard, Varanus komodoensis"),
    ("n01697457", "African crocodile, Nile crocodile, Crocodylus niloticus"),
)
# Made-up WNIDs start with n9 (leaves) and n8 (inner nodes): WordNet 3.0 noun offsets stay
# below 16,000,000, so they can never clash with a real synset.
META_FIELDS = ("ILSVRC2012_ID", "WNID", "words", "gloss", "num_children", "children", "wordnet_height",
               "num_train_images")

def class_synsets(classes: int) -> list[tuple[str, str]]:
    """(WNID, words) of each class in sorted-WNID order: real ImageNet ones first, then made-up."""
    made_up = [(f"n9{i:07d}", f"synthetic {class_family(i).description()}") for i in range(len(REAL_SYNSETS), classes)]
    return list(REAL_SYNSETS[:classes]) + made_up


def meta_mat_bytes(synsets: list[tuple[str, str]], ids: np.ndarray, train_counts: list[int]) -> bytes:
    """The devkit's meta.mat: a `synsets` struct array, leaves (IDs 1..N) then inner nodes.

    Like the real one, rows run in ID order; leaves have num_children 0, and one inner node
    per shape plus a root stand in for the WordNet hierarchy above them.
    """
    n = len(synsets)
    leaves: dict[int, tuple[Any, ...]] = {}
    by_shape: dict[str, list[int]] = {}
    for c, (wnid, words) in enumerate(synsets):
        family = class_family(c)
        gloss = f"generated images: a {family.description()} among distractor shapes, in any colour"
        leaves[int(ids[c])] = _synset_row(int(ids[c]), wnid, words, gloss, [], 0, train_counts[c])
        by_shape.setdefault(family.shape, []).append(c)
    rows = [leaves[i] for i in range(1, n + 1)]
    inner_ids = []
    for j, (shape, members) in enumerate(sorted(by_shape.items())):
        inner_ids.append(n + j + 1)
        rows.append(_synset_row(n + j + 1, f"n8{j:07d}", f"synthetic {shape}", f"generated {shape} classes",
                                sorted(int(ids[c]) for c in members), 1, sum(train_counts[c] for c in members)))
    rows.append(_synset_row(n + len(inner_ids) + 1, f"n8{len(inner_ids):07d}", "synthetic object",
                            "every generated class", inner_ids, 2, sum(train_counts)))
    table = np.empty((len(rows), 1), dtype=[(f, object) for f in META_FIELDS])
    for r, row in enumerate(rows):
        table[r, 0] = row
    buf = io.BytesIO()
    scipy.io.savemat(buf, {"synsets": table}, format="5", oned_as="row")
    data = bytearray(buf.getvalue())
    # savemat stamps the time into the 116-byte header text; a fixed one keeps files byte-identical.
    data[:116] = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: alexrepro synth".ljust(116)
    return bytes(data)


def _synset_row(sid: int, wnid: str, words: str, gloss: str, children: list[int], height: int,
                num_train: int) -> tuple[Any, ...]:
    return (np.array([[sid]], np.uint16), wnid, words, gloss, np.array([[len(children)]], np.uint16),
            np.array(children, np.uint16).reshape(1, -1), np.array([[height]], np.uint8),
            np.array([[num_train]], np.int32))
