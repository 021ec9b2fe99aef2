"""The built-in vitscope plugins (installed as `vitscope.plugins`), one module each.

They register through the `vitscope.plugins` entry-point group in setup.cfg, exactly as a
third-party plugin does, and import only what a third-party plugin may: vitscope.dump,
vitscope.plugin, vitscope.methods, vitscope.render, vitscope.errors and vitscope.testing. This file imports
nothing, so the host can name the built-ins without loading them.
"""
# The built-ins, as declared in setup.cfg (a test checks that the two agree). Used when
# vitscope runs from a source tree that was never installed (no entry points), to recognise
# built-ins when autoload is disabled, and to list them first on the index page.
BUILTINS: dict[str, str] = {
    "token-attention": "vitscope.plugins.token_attention:TokenAttention",
    "cls-heatmap": "vitscope.plugins.cls_heatmap:ClsHeatmap",
    "rollout": "vitscope.plugins.rollout:Rollout",
    "cls-embedding": "vitscope.plugins.cls_embedding:ClsEmbedding",
    "norm-activations": "vitscope.plugins.norm_activations:NormActivations",
    "grad-rollout": "vitscope.plugins.grad_rollout:GradRollout",
    "attn-grad": "vitscope.plugins.grad_rollout:AttnGrad",
    "gradcam": "vitscope.plugins.gradcam:GradCam",
    "attention-sinks": "vitscope.plugins.attention_sinks:AttentionSinks",
    "gradcam-pp": "vitscope.plugins.cams:GradCamPlusPlus",
    "hirescam": "vitscope.plugins.cams:HiResCam",
    "layercam": "vitscope.plugins.cams:LayerCam",
    "eigencam": "vitscope.plugins.cams:EigenCam",
    "integrated-gradients": "vitscope.plugins.model_maps:IntegratedGradients",
    "occlusion": "vitscope.plugins.model_maps:Occlusion",
    "scorecam": "vitscope.plugins.model_maps:ScoreCam",
    "attnlrp": "vitscope.plugins.model_maps:AttnLrp",
    "cp-lrp": "vitscope.plugins.model_maps:CpLrp",
    "logit-lens": "vitscope.plugins.logit_lens:LogitLens",
    "logit-attribution": "vitscope.plugins.logit_attribution:LogitAttribution",
    "head-stats": "vitscope.plugins.head_stats:HeadStats",
    "probe": "vitscope.plugins.probe:Probe",
    "cka": "vitscope.plugins.cka:Cka",
}
