"""The search: Ray Tune (Tuner, OptunaSearch, ASHA), the trainable, the Tune callback, the live table, the finished
study (front, importances), bench. The only folder that imports Ray Tune."""
