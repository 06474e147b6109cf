-- email_campaigns: each Klaviyo and Mailchimp campaign as the platforms report it, with what its
-- recipients bought: sends, deliveries (sends without a bounce), unique opens and clicks,
-- unsubscribes, and the recipients who ordered (any sales system, through the identity graph) in the
-- 7 days after the send, with that revenue. Recipients are counted per email address; one the identity
-- graph does not know counts in the sends but cannot convert. No holdout here (the platforms send to
-- whole lists): campaign_performance holds the audiences' incremental figures.
-- Grain: platform x campaign_id.
-- Times are UTC: the lake's instants, read in p13n's UTC sessions (DuckDB and Spark alike).
WITH events AS (
    SELECT 'klaviyo' AS platform, campaign_id, email_hmac, CAST(occurred_at AS TIMESTAMP) AS at,
           CASE metric WHEN 'received' THEN 'sent' WHEN 'opened' THEN 'open' WHEN 'clicked' THEN 'click'
                       WHEN 'bounced' THEN 'bounce' WHEN 'unsubscribed' THEN 'unsub' ELSE metric END AS action
    FROM {{ silver.klaviyo_events }}
    WHERE campaign_id IS NOT NULL
    UNION ALL
    SELECT 'mailchimp' AS platform, campaign_id, email_hmac, CAST(occurred_at AS TIMESTAMP) AS at, action
    FROM {{ silver.mailchimp_activity }}
    WHERE campaign_id IS NOT NULL
),
recipients AS (
    SELECT e.platform, e.campaign_id, e.email_hmac, max(k.customer_id) AS customer_id,
           min(CASE WHEN e.action = 'sent' THEN e.at END) AS sent_at,
           max(CASE WHEN e.action = 'open' THEN 1 ELSE 0 END) AS opened,
           max(CASE WHEN e.action = 'click' THEN 1 ELSE 0 END) AS clicked,
           max(CASE WHEN e.action = 'bounce' THEN 1 ELSE 0 END) AS bounced,
           max(CASE WHEN e.action = 'unsub' THEN 1 ELSE 0 END) AS unsubscribed
    FROM events e
    LEFT JOIN {{ gold.identity_keys }} k ON k.key_type = 'email_hmac' AND k.key_value = e.email_hmac
    GROUP BY e.platform, e.campaign_id, e.email_hmac
),
bought AS (
    SELECT r.platform, r.campaign_id, r.email_hmac, count(*) AS orders, sum(o.revenue_usd) AS revenue
    FROM recipients r
    JOIN {{ orders }} o ON o.customer_id = r.customer_id AND o.ordered_at >= r.sent_at
                       AND o.ordered_at < r.sent_at + INTERVAL 7 DAY
    GROUP BY r.platform, r.campaign_id, r.email_hmac
)
SELECT r.platform, r.campaign_id,
       min(r.sent_at) AS first_sent_at,
       count(r.sent_at) AS sends,
       count(r.sent_at) - sum(r.bounced) AS deliveries,
       sum(r.opened) AS unique_opens,
       sum(r.clicked) AS unique_clicks,
       sum(r.unsubscribed) AS unsubscribes,
       round(sum(r.opened) / nullif(count(r.sent_at) - sum(r.bounced), 0), 4) AS open_rate,
       round(sum(r.clicked) / nullif(count(r.sent_at) - sum(r.bounced), 0), 4) AS click_rate,
       count(b.email_hmac) AS converted_recipients,
       round(count(b.email_hmac) / nullif(count(r.sent_at), 0), 4) AS conversion_rate_7d,
       round(coalesce(sum(b.revenue), 0), 2) AS revenue_7d
FROM recipients r
LEFT JOIN bought b ON b.platform = r.platform AND b.campaign_id = r.campaign_id AND b.email_hmac = r.email_hmac
GROUP BY r.platform, r.campaign_id
ORDER BY first_sent_at, r.platform, r.campaign_id
