"""`vitscope score`: evidence for every map. Faithfulness (token deletion and insertion beside a
random order), the model-randomisation test, and localisation against baselines, each figure
with a bootstrap 95% CI over images. Modules:

    stats          bootstrap CIs, paired differences, Spearman correlations per image
    faithfulness   deletion / insertion curves by dropping patch tokens (or greying pixels)
    randomization  the cascading weight randomisation (Adebayo et al. 2018)
    localization   mass in mask, pointing game and the baseline maps (no torch)
    run            the whole evaluation of a checkpoint's map plugins
    report         terminal table, score.json, PNG and HTML figures, the index.html section
"""
