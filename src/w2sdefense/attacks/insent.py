"""InSent (AddSent): a fixed sentence inserted into the text (Dai et al. 2019)."""

from w2sdefense.attacks.base import InsertionAttack, register_attack


@register_attack("insent", "addsent")
class InSent(InsertionAttack):
    """Inserts a whole trigger sentence at a random word boundary."""

    default_triggers = ("I watched this 3D movie",)
