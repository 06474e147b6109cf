-- clv_by_acquisition_channel: predicted 12-month value by the channel of each customer's first order,
-- on the latest scoring date.
-- Grain: acquisition_channel (web | app | store).
WITH firsts AS (
    SELECT customer_id, channel AS acquisition_channel,
           row_number() OVER (PARTITION BY customer_id ORDER BY ordered_at, order_id) AS n
    FROM {{ orders }}
),
latest AS (SELECT max(as_of_date) AS as_of_date FROM {{ gold.clv }})
SELECT f.acquisition_channel,
       count(*) AS customers,
       round(avg(v.clv_12m), 2) AS avg_clv_12m,
       round(sum(v.clv_12m), 2) AS total_clv_12m,
       round(avg(v.probability_alive), 4) AS avg_probability_alive,
       round(avg(v.expected_purchases_365d), 3) AS avg_expected_purchases_365d
FROM firsts f
JOIN {{ gold.clv }} v ON v.customer_id = f.customer_id
JOIN latest ON v.as_of_date = latest.as_of_date
WHERE f.n = 1
GROUP BY f.acquisition_channel
ORDER BY avg_clv_12m DESC
