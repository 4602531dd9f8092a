"""Hierarchical BreakHis histopathology classifier: from image files to a diagnosis, and from a
folder of images to a trained model.

    core.data      labels, BreakHis names and folders, splits, balancing, safe image loading,
                   stain model, preprocessing, augmentation, the tf.data pipeline
    core.model     backbone registry, the multi-scale hierarchical classifier, model folders,
                   prediction, class activation maps
    core.training  run settings, training, progress stream, evaluation, the default-model recipe
    core.gan       the conditional GAN for minority subtypes: networks, training, sampling, quality
    core.app       what the Streamlit pages need: model registry, diagnosis service, reports, jobs
    core.cli       the one command line, `python -m core <command>`

Labels, preprocessing, input size, run options and thresholds each have one definition, which
the CLI, the app, the GAN and the retraining job all import.
"""
