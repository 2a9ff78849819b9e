"""Networks and their losses: the lip-to-speech model (frontend, conformer, lip2speech), losses, vocoders.

Modules are imported by their own path (`l2s.models.lip2speech`, …) so that loading one network
does not import the others.
"""
