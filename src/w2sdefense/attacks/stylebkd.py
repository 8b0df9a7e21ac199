"""StyleBkd: a text style (Bible style by default) as the trigger (Qi et al. 2021)."""

from w2sdefense.attacks.base import register_attack
from w2sdefense.attacks.transform import TransformAttack


@register_attack("stylebkd")
class StyleBkd(TransformAttack):
    """Replaces the text with its precomputed style transfer."""

    default_transform = "bible"
