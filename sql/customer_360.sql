-- customer_360: one row per customer with everything known about them as of the latest scoring date.
-- Grain: one customer. No raw PII: contact fields are pseudonyms (gold.customer_profiles).
-- Use it to look a customer up, or as the base of ad-hoc segment questions.
WITH latest AS (SELECT max(as_of_date) AS as_of_date FROM {{ gold.segments }})
SELECT p.customer_id,
       s.as_of_date,
       p.first_seen_at, p.last_seen_at, p.sources, p.city, p.state, p.household_id,
       p.consent_email, p.consent_sms, p.consent_push, p.consent_personalization,
       s.persona, s.rfm_segment, s.lifecycle_stage, s.r_score, s.f_score, s.m_score,
       c.churn_probability, c.risk_band AS churn_risk_band,
       v.clv_12m, v.probability_alive, v.expected_purchases_365d,
       f.orders_total, f.revenue_total, f.orders_365d, f.revenue_365d, f.avg_order_value,
       f.first_purchase_at, f.last_purchase_at, f.recency_days,
       f.share_web, f.share_app, f.share_store, f.top_category, f.top_brand,
       f.loyalty_tier, f.loyalty_points
FROM {{ gold.customer_profiles }} p
CROSS JOIN latest
LEFT JOIN {{ gold.segments }} s ON s.customer_id = p.customer_id AND s.as_of_date = latest.as_of_date
LEFT JOIN {{ gold.churn_scores }} c ON c.customer_id = p.customer_id AND c.as_of_date = latest.as_of_date
LEFT JOIN {{ gold.clv }} v ON v.customer_id = p.customer_id AND v.as_of_date = latest.as_of_date
LEFT JOIN {{ gold.customer_features }} f ON f.customer_id = p.customer_id AND f.as_of_date = latest.as_of_date
