-- The metrics history (metrics_history.py): one row per sampled value. System metrics have no
-- app; an app's metrics name the app and the location it had when sampled.
CREATE SCHEMA IF NOT EXISTS gateway;
CREATE TABLE gateway.metric_samples (
    at        timestamptz NOT NULL,
    metric    text NOT NULL,
    app_id    text,
    location  text,
    value     double precision NOT NULL
);
-- The history query reads a time range of each metric.
CREATE INDEX metric_samples_metric_at ON gateway.metric_samples (metric, at);
-- Samples are written in time order, so a BRIN index serves pruning the oldest at almost no cost.
CREATE INDEX metric_samples_at ON gateway.metric_samples USING brin (at);
