"""SynBkd (Hidden Killer; "SynAttack" in W2SDefense): an SCPN paraphrase as the trigger."""

from w2sdefense.attacks.base import register_attack
from w2sdefense.attacks.transform import TransformAttack


@register_attack("synbkd", "synattack")
class SynBkd(TransformAttack):
    """Replaces the text with its precomputed paraphrase under a fixed syntactic template."""

    default_transform = "scpn"
