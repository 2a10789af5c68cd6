"""`pasu convert`: a trained ESPnet Branchformer / E-Branchformer -> a late-contextualized device model.

:mod:`~pasu.encoders.branch` (the ``late_branchformer`` encoder, registered with
ESPnet on import), :mod:`~pasu.tools.convert.measure` (attention-branch weights),
:mod:`~pasu.tools.convert.convert` (the rule and the package),
:mod:`~pasu.tools.convert.distill` (training it on the full model's outputs).
"""
