"""The console's words in Chinese (the default) and English; a missing word falls back to English, then the key."""

from __future__ import annotations

LANGUAGES = {"zh-CN": "中文", "en": "English"}
DEFAULT = "zh-CN"

WORDS: dict[str, dict[str, str]] = {
    "title": {"zh-CN": "客户运营控制台", "en": "CRM console"},
    "sign_in": {"zh-CN": "登录", "en": "Sign in"},
    "sign_out": {"zh-CN": "退出", "en": "Sign out"},
    "api_key": {"zh-CN": "API 密钥", "en": "API key"},
    "bad_key": {"zh-CN": "密钥无效或已吊销", "en": "Invalid or revoked key"},
    "too_many": {"zh-CN": "失败次数过多，请稍后再试", "en": "Too many failed attempts: try again later"},
    "signed_in_as": {"zh-CN": "当前用户", "en": "Signed in as"},
    "customers": {"zh-CN": "客户查询", "en": "Customers"},
    "tasks": {"zh-CN": "VIP 回访任务", "en": "VIP call tasks"},
    "campaigns": {"zh-CN": "营销活动", "en": "Campaigns"},
    "reports": {"zh-CN": "报表", "en": "Reports"},
    "churn": {"zh-CN": "流失模型", "en": "Churn model"},
    "jobs": {"zh-CN": "定时任务", "en": "Jobs"},
    "lookup_hint": {"zh-CN": "外部 ID、邮箱或手机号（精确匹配）", "en": "External id, email or phone (exact match)"},
    "search": {"zh-CN": "查询", "en": "Search"},
    "no_match": {"zh-CN": "没有找到客户", "en": "No customer found"},
    "profile": {"zh-CN": "客户档案", "en": "Customer profile"},
    "contact": {"zh-CN": "联系方式", "en": "Contact"},
    "tier": {"zh-CN": "等级", "en": "Tier"},
    "layer": {"zh-CN": "分层", "en": "Layer"},
    "since": {"zh-CN": "起始", "en": "since"},
    "tier_history": {"zh-CN": "等级变化", "en": "Tier history"},
    "tags": {"zh-CN": "行为标签", "en": "Tags"},
    "why": {"zh-CN": "原因", "en": "Why"},
    "churn_risk": {"zh-CN": "流失风险", "en": "Churn risk"},
    "at_risk": {"zh-CN": "高风险", "en": "At risk"},
    "not_at_risk": {"zh-CN": "正常", "en": "Not at risk"},
    "reasons": {"zh-CN": "主要原因", "en": "Reasons"},
    "risk_level": {"zh-CN": "风险等级", "en": "Risk level"},
    "risk_high": {"zh-CN": "高", "en": "high"},
    "risk_medium": {"zh-CN": "中", "en": "medium"},
    "risk_low": {"zh-CN": "低", "en": "low"},
    "p_alive": {"zh-CN": "仍是活跃顾客的概率", "en": "P(still a customer)"},
    "expected_orders": {"zh-CN": "预计订单（90 / 365 天）", "en": "Expected orders (90 / 365 days)"},
    "predicted_clv": {"zh-CN": "预测 12 个月价值", "en": "Predicted 12-month value"},
    "next_order": {"zh-CN": "预计下次下单", "en": "Expected next order"},
    "trend": {"zh-CN": "趋势", "en": "Trend"},
    "contact_history": {"zh-CN": "触达记录", "en": "Contact history"},
    "consent": {"zh-CN": "授权", "en": "Consent"},
    "channel": {"zh-CN": "渠道", "en": "Channel"},
    "status": {"zh-CN": "状态", "en": "Status"},
    "reason": {"zh-CN": "说明", "en": "Reason"},
    "campaign": {"zh-CN": "活动", "en": "Campaign"},
    "send_at": {"zh-CN": "发送时间", "en": "Send time"},
    "discount_budget": {"zh-CN": "优惠额度", "en": "Discount budget"},
    "spend_365": {"zh-CN": "近一年消费", "en": "Spend, 365 days"},
    "granted": {"zh-CN": "已用优惠", "en": "Discount granted"},
    "open_offers": {"zh-CN": "未用优惠券", "en": "Open offers"},
    "left": {"zh-CN": "剩余额度", "en": "Left"},
    "none": {"zh-CN": "无", "en": "none"},
    "claim": {"zh-CN": "认领", "en": "Claim"},
    "record_outcome": {"zh-CN": "记录结果", "en": "Record outcome"},
    "notes": {"zh-CN": "备注", "en": "Notes"},
    "script": {"zh-CN": "话术", "en": "Script"},
    "priority": {"zh-CN": "优先级", "en": "Priority"},
    "dry_run": {"zh-CN": "试运行", "en": "Dry run"},
    "pause": {"zh-CN": "暂停", "en": "Pause"},
    "resume": {"zh-CN": "恢复", "en": "Resume"},
    "audience": {"zh-CN": "目标人群", "en": "Audience"},
    "recipients": {"zh-CN": "接收人数", "en": "Recipients"},
    "messages": {"zh-CN": "消息数", "en": "Messages"},
    "exclusions": {"zh-CN": "排除原因", "en": "Exclusions by reason"},
    "per_channel": {"zh-CN": "各渠道", "en": "Per channel"},
    "estimated_cost": {"zh-CN": "预计成本", "en": "Estimated cost"},
    "occurrence": {"zh-CN": "执行日期", "en": "Occurrence"},
    "uplift": {"zh-CN": "增量转化（95% 置信区间）", "en": "Uplift (95% interval)"},
    "tier_over_time": {"zh-CN": "等级分布变化", "en": "Tier distribution over time"},
    "cohort_retention": {"zh-CN": "首单月份留存", "en": "Retention by first-order month"},
    "cohort": {"zh-CN": "首单月份", "en": "Cohort"},
    "model_metrics": {"zh-CN": "模型指标与基线对比", "en": "Metrics against baselines"},
    "calibration": {"zh-CN": "校准曲线", "en": "Calibration"},
    "predicted": {"zh-CN": "预测", "en": "Predicted"},
    "observed": {"zh-CN": "实际", "en": "Observed"},
    "next_run": {"zh-CN": "下次运行", "en": "Next run"},
    "last_run": {"zh-CN": "最近运行", "en": "Last run"},
    "runs": {"zh-CN": "运行记录", "en": "Runs"},
    "schedule": {"zh-CN": "计划", "en": "Schedule"},
    "forbidden": {"zh-CN": "当前角色无权访问此页面", "en": "Your role may not open this page"},
    "not_found": {"zh-CN": "未找到", "en": "Not found"},
    "bad_request": {"zh-CN": "请求无效", "en": "Bad request"},
    "expired_form": {"zh-CN": "表单已过期，请刷新后重试", "en": "The form expired: reload the page and try again"},
    "nothing_yet": {"zh-CN": "暂无数据", "en": "Nothing yet"},
    "model": {"zh-CN": "模型", "en": "Model"},
    "current": {"zh-CN": "当前", "en": "current"},
    "members": {"zh-CN": "实验组 / 对照组", "en": "Treated / holdout"},
    "significant": {"zh-CN": "显著", "en": "significant"},
    "not_significant": {"zh-CN": "尚不显著", "en": "not significant yet"},
    "language": {"zh-CN": "语言", "en": "Language"},
    "open": {"zh-CN": "打开", "en": "Open"},
    "customer": {"zh-CN": "客户", "en": "Customer"},
    "versions": {"zh-CN": "版本", "en": "Versions"},
    "run_dry_run": {"zh-CN": "运行试运行", "en": "Run a dry run"},
}


def translator(language: str):
    """A function giving each key's words in the language (English, then the key, when missing)."""
    def translate(key: str) -> str:
        words = WORDS.get(key)
        if words is None:
            return key
        return words.get(language) or words.get("en") or key
    return translate


def pick(requested: str | None, cookie: str | None) -> str:
    """The page language: a `lang` parameter, else the cookie, else Chinese."""
    for candidate in (requested, cookie):
        if candidate in LANGUAGES:
            return candidate
    return DEFAULT
