-- experiment_results: what each experiment and holdout caused, on each measured date (readable
-- columns of gold.experiment_results): every arm against its baseline arm, per metric, with the
-- relative lift and its 95% interval, the CUPED-adjusted lift, the sequential p-value (safe to read
-- every night), the sample-ratio check and whether the measurement window is complete yet.
-- Grain: as_of_date x experiment x arm x metric.
SELECT as_of_date, experiment, kind, arm, baseline_arm, metric,
       units, baseline_units,
       round(mean, 4) AS variant_value, round(baseline_mean, 4) AS baseline_value,
       round(lift, 4) AS lift, round(ci_low, 4) AS lift_ci_low, round(ci_high, 4) AS lift_ci_high,
       round(p_value, 4) AS p_value,
       round(cuped_lift, 4) AS cuped_lift, round(cuped_ci_low, 4) AS cuped_ci_low,
       round(cuped_ci_high, 4) AS cuped_ci_high,
       round(seq_p_value, 4) AS sequential_p_value,
       CASE WHEN ci_low > 0 THEN 'better' WHEN ci_high < 0 THEN 'worse'
            WHEN lift IS NULL THEN 'no estimate' ELSE 'inconclusive' END AS verdict,
       round(incremental, 2) AS incremental_total,
       sample_ratio_mismatch,
       window_days, round(window_complete, 4) AS window_complete,
       window_complete < 1 AS partial_window,
       note
FROM {{ gold.experiment_results }}
ORDER BY as_of_date, experiment, arm, metric
