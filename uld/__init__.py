"""ULD: logit-difference unlearning with a trained assistant (Ji et al., NeurIPS 2024), as a gateway plug-in.

`uld_method.UldMethod` is the plug-in and its live training-job worker; `assistant` builds the
assistant from the served model; `data` generates the forget set and ships the retain set;
`training` trains it; `decoding` is the logits hook; `cli` is `unlearn-gateway uld ...`.
"""
